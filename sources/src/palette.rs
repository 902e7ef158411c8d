//! Label maps as files: the Pascal VOC colour map, and 8-bit index PNGs (a palette PNG whose
//! pixel values are class ids, as VOC's SegmentationClass/ holds) read and written as ids. The
//! `image` crate would expand a palette to RGB, so masks go through `png` directly; a mask saved
//! as plain 8-bit grayscale reads the same way (its values are the ids).
//!
//! Not here: dataset layouts (`files.rs`), RGB images (decoded with `image`).

use std::fs;
use std::io::{BufWriter, Write};
use std::path::Path;

/// The Pascal VOC colour map: class `i`'s colour from the bits of `i` (index 255, the ignore
/// label, comes out as (224, 224, 192), VOC's border colour).
pub fn voc_palette() -> [[u8; 3]; 256] {
    let mut p = [[0u8; 3]; 256];
    for (i, c) in p.iter_mut().enumerate() {
        let mut id = i;
        for j in 0..8 {
            for (ch, v) in c.iter_mut().enumerate() {
                *v |= (((id >> ch) & 1) as u8) << (7 - j);
            }
            id >>= 3;
        }
    }
    p
}

/// A label map read from an 8-bit palette or grayscale PNG: (ids row-major, height, width).
/// Errors say what the file is instead when it is not one.
pub fn read_index_png(path: &Path) -> Result<(Vec<u8>, usize, usize), String> {
    let file = fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    // No expansion: palette indices stay indices.
    decoder.set_transformations(png::Transformations::IDENTITY);
    let mut reader = decoder
        .read_info()
        .map_err(|e| format!("not a readable PNG: {e}"))?;
    let info = reader.info();
    let (w, h) = (info.width as usize, info.height as usize);
    let (ct, depth) = (info.color_type, info.bit_depth);
    if depth != png::BitDepth::Eight
        || !matches!(ct, png::ColorType::Indexed | png::ColorType::Grayscale)
    {
        let bits = match depth {
            png::BitDepth::One => 1,
            png::BitDepth::Two => 2,
            png::BitDepth::Four => 4,
            png::BitDepth::Eight => 8,
            png::BitDepth::Sixteen => 16,
        };
        // Say what this file is and what to do about it: the fix differs by kind.
        let (what, fix) = match ct {
            png::ColorType::Grayscale | png::ColorType::GrayscaleAlpha if bits == 16 => (
                "a 16-bit grayscale PNG",
                "save the ids as 8 bits (PIL: `Image.fromarray(ids.astype(np.uint8))`)",
            ),
            png::ColorType::Grayscale | png::ColorType::Indexed => (
                "a PNG of fewer than 8 bits per pixel",
                "save the ids as 8 bits",
            ),
            png::ColorType::GrayscaleAlpha => (
                "a grayscale PNG with an alpha channel",
                "drop the alpha channel",
            ),
            png::ColorType::Rgb | png::ColorType::Rgba => (
                "an RGB colour mask",
                "map each colour to its class id first (VOC's palette: `flowseg data` reads \
                 index PNGs)",
            ),
        };
        return Err(format!(
            "a label mask must be an 8-bit palette or grayscale PNG of class ids; this one is \
             {what} ({bits} bits): {fix}"
        ));
    }
    let mut buf = vec![0u8; reader.output_buffer_size().ok_or("PNG too large")?];
    let frame = reader
        .next_frame(&mut buf)
        .map_err(|e| format!("truncated or corrupt PNG: {e}"))?;
    buf.truncate(frame.buffer_size());
    if buf.len() != w * h {
        return Err(format!(
            "PNG row layout unexpected: {} bytes for {w}×{h}",
            buf.len()
        ));
    }
    Ok((buf, h, w))
}

/// Writes `ids` (row-major, `h`×`w`) as an 8-bit palette PNG with the VOC colours: opens as a
/// coloured mask in any viewer and reads back as ids. The bytes depend only on the arguments.
pub fn write_index_png(path: &Path, ids: &[u8], h: usize, w: usize) -> Result<(), String> {
    if ids.len() != h * w {
        return Err(format!("{} ids for a {h}×{w} mask", ids.len()));
    }
    let palette: Vec<u8> = voc_palette().iter().flatten().copied().collect();
    let file = fs::File::create(path).map_err(|e| format!("cannot create: {e}"))?;
    let mut out = BufWriter::new(file);
    {
        let mut enc = png::Encoder::new(&mut out, w as u32, h as u32);
        enc.set_color(png::ColorType::Indexed);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_palette(palette);
        let mut writer = enc.write_header().map_err(|e| e.to_string())?;
        writer.write_image_data(ids).map_err(|e| e.to_string())?;
        writer.finish().map_err(|e| e.to_string())?;
    }
    out.flush().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_16_bit_grayscale_mask_is_named_as_such() {
        let dir = std::env::temp_dir().join(format!("flowseg-mask16-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m16.png");
        let file = std::fs::File::create(&path).unwrap();
        let mut enc = png::Encoder::new(std::io::BufWriter::new(file), 2, 2);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Sixteen);
        enc.write_header()
            .unwrap()
            .write_image_data(&[0; 8])
            .unwrap();
        let e = read_index_png(&path).unwrap_err();
        assert!(
            e.contains("16-bit grayscale") && e.contains("8 bits"),
            "{e}"
        );
        assert!(!e.contains("RGB"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn voc_colours_match_the_published_map() {
        let p = voc_palette();
        assert_eq!(p[0], [0, 0, 0]);
        assert_eq!(p[1], [128, 0, 0]);
        assert_eq!(p[2], [0, 128, 0]);
        assert_eq!(p[3], [128, 128, 0]);
        assert_eq!(p[15], [192, 128, 128]); // person
        assert_eq!(p[255], [224, 224, 192]); // the ignore border
    }

    #[test]
    fn index_pngs_round_trip_and_rgb_is_refused() {
        let dir = std::env::temp_dir().join(format!("flowseg-palette-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let ids: Vec<u8> = (0..35).map(|i| [0, 1, 2, 255][i % 4]).collect();
        let p = dir.join("m.png");
        write_index_png(&p, &ids, 5, 7).unwrap();
        assert_eq!(read_index_png(&p).unwrap(), (ids.clone(), 5, 7));
        let again = dir.join("m2.png");
        write_index_png(&again, &ids, 5, 7).unwrap();
        assert_eq!(fs::read(&p).unwrap(), fs::read(&again).unwrap());
        let rgb = dir.join("rgb.png");
        image::RgbImage::new(4, 4).save(&rgb).unwrap();
        let e = read_index_png(&rgb).unwrap_err();
        assert!(e.contains("8-bit palette or grayscale"), "{e}");
        fs::write(dir.join("junk.png"), b"not a png").unwrap();
        assert!(read_index_png(&dir.join("junk.png"))
            .unwrap_err()
            .contains("not a readable PNG"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
