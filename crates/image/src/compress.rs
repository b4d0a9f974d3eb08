//! Initramfs compression: the [`Compression`] choice, a streaming encoder set
//! up the way the kernel's decompressors need it, and [`decompress`], which
//! detects the format from the magic bytes.
//!
//! Kernel constraints honoured here: xz streams use the CRC32 check (no
//! CRC64/SHA-256) and LZMA2 after the x86 BCJ filter (the kernel's xz decoder
//! takes one BCJ filter; Kiln's tiny kernel keeps the x86 one, Debian's has
//! them all): the filter makes x86 code compress ~3 % smaller; gzip is plain gzip with
//! header mtime 0 and no file name; zstd is single-threaded (so the output is
//! reproducible) with a window well inside the kernel's 128 MiB limit.

use std::fmt;
use std::io::{self, Read, Write};
use std::ops::RangeInclusive;
use std::str::FromStr;

use crate::ImageError;

/// Compression of the initramfs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    /// A raw newc cpio archive.
    None,
    /// gzip (deflate), default level 9.
    Gzip,
    /// xz with CRC32 check, the x86 BCJ filter and LZMA2, default preset 6.
    Xz,
    /// zstd, single-threaded, default level 9.
    Zstd,
}

const XZ_MAGIC: &[u8] = &[0xFD, b'7', b'z', b'X', b'Z', 0x00];
const GZIP_MAGIC: &[u8] = &[0x1F, 0x8B];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xB5, 0x2F, 0xFD];

impl Compression {
    /// Every variant, in a stable order.
    pub const ALL: [Compression; 4] = [
        Compression::None,
        Compression::Gzip,
        Compression::Xz,
        Compression::Zstd,
    ];

    /// File extension of an image using this compression: `"cpio"`,
    /// `"cpio.gz"`, `"cpio.xz"` or `"cpio.zst"`.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::None => "cpio",
            Compression::Gzip => "cpio.gz",
            Compression::Xz => "cpio.xz",
            Compression::Zstd => "cpio.zst",
        }
    }

    /// The name accepted by [`FromStr`]: `"none"`, `"gzip"`, `"xz"` or `"zstd"`.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
        }
    }

    /// Level used when none is given (`None` for [`Compression::None`]).
    pub fn default_level(self) -> Option<i32> {
        match self {
            Compression::None => None,
            Compression::Gzip => Some(9),
            Compression::Xz => Some(6),
            Compression::Zstd => Some(9),
        }
    }

    /// Accepted levels (`None` for [`Compression::None`], which ignores the level).
    pub fn level_range(self) -> Option<RangeInclusive<i32>> {
        match self {
            Compression::None => None,
            Compression::Gzip | Compression::Xz => Some(0..=9),
            Compression::Zstd => Some(1..=*zstd::compression_level_range().end()),
        }
    }

    /// The level actually used for `level`: the default when `None`, an
    /// error when outside [`level_range`](Self::level_range).
    pub fn effective_level(self, level: Option<i32>) -> Result<Option<i32>, ImageError> {
        let Some(range) = self.level_range() else {
            return Ok(None);
        };
        match level {
            None => Ok(self.default_level()),
            Some(l) if range.contains(&l) => Ok(Some(l)),
            Some(l) => Err(ImageError::InvalidLevel {
                compression: self,
                level: l,
                min: *range.start(),
                max: *range.end(),
            }),
        }
    }

    /// Detect the compression of an image from its first bytes (a raw newc
    /// archive gives [`Compression::None`]); `None` if unrecognised.
    pub fn detect(data: &[u8]) -> Option<Compression> {
        if data.starts_with(GZIP_MAGIC) {
            Some(Compression::Gzip)
        } else if data.starts_with(XZ_MAGIC) {
            Some(Compression::Xz)
        } else if data.starts_with(ZSTD_MAGIC) {
            Some(Compression::Zstd)
        } else if data.starts_with(crate::cpio::NEWC_MAGIC)
            || data.starts_with(crate::cpio::NEWC_CRC_MAGIC)
        {
            Some(Compression::None)
        } else {
            None
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Compression {
    type Err = ImageError;

    /// Parse `"none"`, `"gzip"`, `"xz"` or `"zstd"` (case-insensitive; `"gz"`
    /// and `"zst"` are accepted as aliases).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(Compression::None),
            "gzip" | "gz" => Ok(Compression::Gzip),
            "xz" => Ok(Compression::Xz),
            "zstd" | "zst" => Ok(Compression::Zstd),
            _ => Err(ImageError::UnknownCompression(s.to_owned())),
        }
    }
}

/// A streaming compressor writing into `W`.
pub(crate) enum Encoder<W: Write> {
    None(W),
    Gzip(flate2::write::GzEncoder<W>),
    Xz(liblzma::write::XzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    /// Set up `compression` at `level` (default when `None`).
    pub(crate) fn new(
        inner: W,
        compression: Compression,
        level: Option<i32>,
    ) -> Result<Self, ImageError> {
        let level = compression.effective_level(level)?;
        let setup_err = |source: io::Error| ImageError::Compressor {
            compression,
            error: source,
        };
        Ok(match (compression, level) {
            (Compression::None, _) | (_, None) => Encoder::None(inner),
            (Compression::Gzip, Some(l)) => {
                // effective_level guarantees 0..=9.
                let level = flate2::Compression::new(l.unsigned_abs());
                Encoder::Gzip(flate2::GzBuilder::new().mtime(0).write(inner, level))
            }
            (Compression::Xz, Some(l)) => {
                let lzma = liblzma::stream::LzmaOptions::new_preset(l.unsigned_abs())
                    .map_err(|e| setup_err(io::Error::from(e)))?;
                let mut filters = liblzma::stream::Filters::new();
                filters.x86().lzma2(&lzma);
                let stream = liblzma::stream::Stream::new_stream_encoder(
                    &filters,
                    liblzma::stream::Check::Crc32,
                )
                .map_err(|e| setup_err(io::Error::from(e)))?;
                Encoder::Xz(liblzma::write::XzEncoder::new_stream(inner, stream))
            }
            (Compression::Zstd, Some(l)) => {
                let mut enc = zstd::stream::write::Encoder::new(inner, l).map_err(setup_err)?;
                enc.include_checksum(true).map_err(setup_err)?;
                // The kernel allocates the whole window to unpack the initramfs: at level 9's
                // default (4 MiB) a 32 MiB guest ran out of memory; 1 MiB costs little size.
                enc.window_log(ZSTD_WINDOW_LOG).map_err(setup_err)?;
                Encoder::Zstd(enc)
            }
        })
    }

    /// Finish the stream and return the inner writer.
    pub(crate) fn finish(self) -> io::Result<W> {
        match self {
            Encoder::None(w) => Ok(w),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Xz(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::None(w) => w.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Xz(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::None(w) => w.flush(),
            Encoder::Gzip(e) => e.flush(),
            Encoder::Xz(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }
}

/// Compress `data` in memory exactly as [`crate::write_initramfs`] would
/// (`level` `None` means the default for `compression`).
pub fn compress(
    data: &[u8],
    compression: Compression,
    level: Option<i32>,
) -> Result<Vec<u8>, ImageError> {
    let mut enc = Encoder::new(Vec::new(), compression, level)?;
    enc.write_all(data)
        .and_then(|()| enc.finish())
        .map_err(|source| ImageError::Compressor {
            compression,
            error: source,
        })
}

/// log2 of the zstd window: small enough for the guest kernel to unpack in little memory.
pub const ZSTD_WINDOW_LOG: u32 = 20;

/// Decompress an image, detecting gzip, xz or zstd by its magic bytes; a raw
/// newc archive (`"070701"`) is returned unchanged.
pub fn decompress(data: &[u8]) -> Result<Vec<u8>, ImageError> {
    let Some(compression) = Compression::detect(data) else {
        let head = &data[..data.len().min(6)];
        return Err(ImageError::UnknownFormat {
            magic: if head.is_empty() {
                "nothing (empty file)".to_owned()
            } else {
                hex::encode(head)
            },
        });
    };
    let mut out = Vec::new();
    let result = match compression {
        Compression::None => {
            out.extend_from_slice(data);
            Ok(0)
        }
        Compression::Gzip => flate2::read::MultiGzDecoder::new(data).read_to_end(&mut out),
        Compression::Xz => liblzma::read::XzDecoder::new_multi_decoder(data).read_to_end(&mut out),
        Compression::Zstd => {
            zstd::stream::read::Decoder::new(data).and_then(|mut d| d.read_to_end(&mut out))
        }
    };
    result.map_err(|source| ImageError::Decompress {
        compression,
        error: source,
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_extensions() {
        for c in Compression::ALL {
            assert_eq!(c.name().parse::<Compression>().expect("parse"), c);
            assert!(c.extension().starts_with("cpio"));
        }
        assert_eq!(Compression::Zstd.extension(), "cpio.zst");
        assert_eq!(Compression::Gzip.extension(), "cpio.gz");
        assert_eq!(Compression::Xz.extension(), "cpio.xz");
        assert_eq!(Compression::None.extension(), "cpio");
        let err = "lz4".parse::<Compression>().expect_err("unknown");
        assert!(err.to_string().contains("lz4"), "{err}");
    }

    #[test]
    fn levels_are_validated() {
        assert_eq!(
            Compression::Zstd.effective_level(None).expect("ok"),
            Some(9)
        );
        assert_eq!(Compression::Xz.effective_level(None).expect("ok"), Some(6));
        assert_eq!(
            Compression::Gzip.effective_level(None).expect("ok"),
            Some(9)
        );
        assert_eq!(
            Compression::None.effective_level(Some(99)).expect("ok"),
            None
        );
        assert!(matches!(
            Compression::Gzip.effective_level(Some(10)),
            Err(ImageError::InvalidLevel { .. })
        ));
        assert!(Compression::Zstd.effective_level(Some(0)).is_err());
        assert!(Compression::Xz.effective_level(Some(-1)).is_err());
    }

    #[test]
    fn in_memory_round_trip() {
        let data = b"070701 some data some data some data".repeat(100);
        for c in Compression::ALL {
            let packed = compress(&data, c, None).expect("compress");
            assert_eq!(Compression::detect(&packed), Some(c));
            assert_eq!(decompress(&packed).expect("decompress"), data, "{c}");
            // Deterministic.
            assert_eq!(compress(&data, c, None).expect("compress"), packed);
        }
    }

    #[test]
    fn gzip_header_is_plain() {
        let packed = compress(b"x", Compression::Gzip, None).expect("gzip");
        assert_eq!(&packed[..3], &[0x1F, 0x8B, 8]);
        assert_eq!(packed[3], 0, "no FNAME/FEXTRA/FCOMMENT flags");
        assert_eq!(&packed[4..8], &[0, 0, 0, 0], "header mtime 0");
    }

    #[test]
    fn xz_is_crc32_with_the_x86_filter_before_lzma2() {
        // x86-ish bytes: call rel32 instructions the BCJ filter rewrites.
        let code: Vec<u8> = (0..4096u32)
            .flat_map(|i| [0xE8, (i & 0xFF) as u8, (i >> 8) as u8, 0, 0, 0x90])
            .collect();
        let packed = compress(&code, Compression::Xz, None).expect("xz");
        assert_eq!(&packed[..6], XZ_MAGIC);
        assert_eq!(packed[7], 0x01, "stream check CRC32");
        let flags = packed[13];
        assert_eq!(flags & 0x03, 1, "two filters");
        assert_eq!(flags & 0xC0, 0, "no size fields in the block header");
        assert_eq!(packed[14], 0x04, "first filter x86 BCJ");
        assert_eq!(packed[15], 0x00, "BCJ has no properties");
        assert_eq!(packed[16], 0x21, "then LZMA2");
        assert_eq!(decompress(&packed).expect("round trip"), code);
    }

    #[test]
    fn unknown_and_corrupt_input() {
        assert!(matches!(
            decompress(b"PK\x03\x04"),
            Err(ImageError::UnknownFormat { .. })
        ));
        assert!(decompress(b"").is_err());
        let mut packed = compress(&[7u8; 4096], Compression::Xz, None).expect("xz");
        packed.truncate(packed.len() / 2);
        assert!(matches!(
            decompress(&packed),
            Err(ImageError::Decompress { .. })
        ));
    }
}
