//! The web API's create request: any body is parsed or refused with a documented code, and a
//! parsed one is checked (against an empty catalog) without a panic.
#![no_main]

use kiln_serve::api::{validate, CreateRequest};
use kiln_serve::catalog::Catalog;
use libfuzzer_sys::fuzz_target;

const CODES: &[&str] = &[
    "bad_body",
    "invalid_request",
    "recipe_not_found",
    "image_not_found",
];

fuzz_target!(|data: &[u8]| {
    match CreateRequest::parse(data) {
        Err(e) => assert!(CODES.contains(&e.code), "{}", e.code),
        Ok(r) => {
            if let Err(e) = validate(&r, &Catalog::default()) {
                assert!(CODES.contains(&e.code), "{}", e.code);
            }
        }
    }
});
