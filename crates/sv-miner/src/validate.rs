//! Input validation before anything is decoded: base64, format (JPEG, PNG, WebP), dimensions
//! read from the header (at most `max_side` on a side, so a decompression bomb is refused before
//! a pixel is allocated). Each failure is a client error with a message saying what is wrong.

use std::io::Cursor;

use base64::Engine;
use image::{ImageFormat, ImageReader};

/// Largest side accepted by default (SPEC: 4096×4096).
pub const MAX_SIDE: u32 = 4096;

/// Why an input was refused; `kind` labels the error metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub kind: &'static str,
    pub message: String,
}

fn invalid(kind: &'static str, message: impl Into<String>) -> Invalid {
    Invalid { kind, message: message.into() }
}

/// Decode base64 (standard alphabet, padding optional; a `data:...;base64,` prefix is allowed).
pub fn decode_base64(s: &str) -> Result<Vec<u8>, Invalid> {
    let s = s.trim();
    let s = match s.strip_prefix("data:") {
        Some(rest) => rest.split_once(',').map(|(_, d)| d).unwrap_or(""),
        None => s,
    };
    if s.is_empty() {
        return Err(invalid("empty_image", "the image field is empty"));
    }
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(s))
        .map_err(|e| invalid("bad_base64", format!("the image is not valid base64: {e}")))
}

/// Check format and dimensions from the header. Returns the format and size.
pub fn check_image(bytes: &[u8], max_side: u32) -> Result<(ImageFormat, u32, u32), Invalid> {
    if bytes.is_empty() {
        return Err(invalid("empty_image", "the image is empty"));
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| invalid("bad_image", format!("cannot read the image header: {e}")))?;
    let format = match reader.format() {
        Some(f @ (ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP)) => f,
        Some(f) => {
            return Err(invalid("unsupported_format", format!("image format {f:?} is not accepted (JPEG, PNG, WebP)")));
        }
        None => return Err(invalid("unsupported_format", "the bytes are not a JPEG, PNG or WebP image")),
    };
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| invalid("bad_image", format!("cannot read the {format:?} header: {e}")))?;
    if w == 0 || h == 0 {
        return Err(invalid("bad_image", format!("the image is {w}x{h}")));
    }
    if w > max_side || h > max_side {
        return Err(invalid("too_large", format!("the image is {w}x{h}; at most {max_side}x{max_side} is accepted")));
    }
    Ok((format, w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let mut buf = Vec::new();
        image::DynamicImage::new_rgb8(w, h).write_to(&mut Cursor::new(&mut buf), ImageFormat::Png).unwrap();
        buf
    }

    #[test]
    fn refusals_name_the_reason() {
        assert_eq!(check_image(&png(8, 6), MAX_SIDE).unwrap().1, 8);
        assert_eq!(check_image(b"GIF89a....", MAX_SIDE).unwrap_err().kind, "unsupported_format");
        assert_eq!(check_image(b"hello", MAX_SIDE).unwrap_err().kind, "unsupported_format");
        assert_eq!(check_image(&png(20, 10), 16).unwrap_err().kind, "too_large");
        assert_eq!(decode_base64("!!!").unwrap_err().kind, "bad_base64");
        assert_eq!(decode_base64("").unwrap_err().kind, "empty_image");
        assert_eq!(decode_base64("data:image/png;base64,aGk=").unwrap(), b"hi");
    }
}
