//! `kiln serve`: flags and start-up of the web console and HTTP API (kiln-serve), on this
//! host's fleet.

use anyhow::{Context, Result};
use clap::Args;
use kiln_serve::{catalog, shutdown_signal, state, token, vms};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Options of `kiln serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on. Anything but a loopback address is reachable from other machines
    /// (plain HTTP): a warning is printed.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// The token file (created 0600 with a new token if missing; default: STATE/serve.token).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Another folder of recipes (repeatable); the repository's recipes/ is always known.
    #[arg(long = "recipes", value_name = "DIR")]
    pub recipes: Vec<PathBuf>,
    /// Another folder of built images (repeatable); images built by `kiln run` are always known.
    #[arg(long = "images", value_name = "DIR")]
    pub images: Vec<PathBuf>,
}

fn catalog_of(a: &ServeArgs) -> catalog::Catalog {
    let mut recipe_roots = Vec::new();
    let cwd_recipes = PathBuf::from("recipes");
    if cwd_recipes.is_dir() {
        recipe_roots.push(std::fs::canonicalize(&cwd_recipes).unwrap_or(cwd_recipes));
    } else {
        // The repository this kiln was built from.
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../recipes");
        if repo.is_dir() {
            recipe_roots.push(std::fs::canonicalize(&repo).unwrap_or(repo));
        }
    }
    recipe_roots.extend(a.recipes.iter().cloned());
    let mut image_roots = vec![crate::dirs::cache_root().join("images")];
    image_roots.extend(a.images.iter().cloned());
    catalog::Catalog {
        recipe_roots,
        image_roots,
    }
}

/// `kiln serve`.
pub fn serve(a: ServeArgs) -> Result<ExitCode> {
    for d in a.recipes.iter().chain(&a.images) {
        if !d.is_dir() {
            return Err(crate::BadInput(format!("{}: no such folder", d.display())).into());
        }
    }
    let state_root = crate::dirs::state_root();
    let token_file = a
        .token_file
        .clone()
        .unwrap_or_else(|| state_root.join("serve.token"));
    let token = token::load_or_create(&token_file)?;
    let vms = Arc::new(vms::FleetVms(crate::dirs::fleet()?));
    let app = Arc::new(state::App::new(
        vms,
        catalog_of(&a),
        token.secret.clone(),
        crate::dirs::cache_root(),
    ));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("listening on {}", a.listen))?;
        let addr = listener.local_addr()?;
        if !addr.ip().is_loopback() {
            eprintln!(
                "kiln: warning: listening on {addr}, reachable from other machines over plain HTTP; \
                 anyone with the token controls the VMs of this host"
            );
        }
        if token.created {
            eprintln!(
                "kiln: new access token (shown once; stored in {}): {}",
                token_file.display(),
                token.secret
            );
        }
        eprintln!(
            "kiln: serving on http://{addr}/ (token in {})",
            token_file.display()
        );
        if let Err(e) = app.refresh().await {
            eprintln!("kiln: warning: listing VMs: {e}");
        }
        tokio::spawn(app.clone().sample_forever());
        let server = kiln_serve::run(listener, app);
        tokio::select! {
            r = server => r.context("serving"),
            _ = shutdown_signal() => {
                eprintln!("kiln: serve stopped (VMs keep running; `kiln ps` lists them)");
                Ok(())
            }
        }
    });
    // Open event streams and consoles are cut; blocking calls to `kiln` are not waited for.
    rt.shutdown_timeout(std::time::Duration::from_millis(500));
    result.map(|()| ExitCode::SUCCESS)
}
