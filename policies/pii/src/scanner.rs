//! The detection engine: one pass over each value's bytes that dispatches
//! on anchors (token starts, `@`, `:`, `-`, `[`, `~`) to hand-written
//! detectors, plus the JSON-path rule and any extra detectors.

use std::sync::OnceLock;

use crate::finding::{Detector, Finding};
use crate::{fields, net, numeric, secrets, words};

/// Finds PII and secrets in string values.
///
/// [`Scanner::new`] has every built-in detector (see the crate docs);
/// [`Scanner::with_detector`] adds more, e.g. a plugin's own categories.
/// A scanner holds no per-call state and can be shared (`Send + Sync`).
pub struct Scanner {
    builtin: bool,
    extra: Vec<Box<dyn Detector>>,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner::new()
    }
}

impl std::fmt::Debug for Scanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scanner")
            .field("builtin", &self.builtin)
            .field("extra_detectors", &self.extra.len())
            .finish()
    }
}

impl Scanner {
    /// A scanner with every built-in detector.
    pub fn new() -> Self {
        Scanner {
            builtin: true,
            extra: Vec::new(),
        }
    }

    /// A scanner with no detector at all; add some with
    /// [`with_detector`](Self::with_detector).
    pub fn empty() -> Self {
        Scanner {
            builtin: false,
            extra: Vec::new(),
        }
    }

    /// Adds a detector that runs after the built-in ones.
    pub fn with_detector(mut self, detector: impl Detector + 'static) -> Self {
        self.extra.push(Box::new(detector));
        self
    }

    /// Every finding in `value` (found at JSON Pointer `path`), sorted by
    /// start then end. Findings may overlap; the policy resolves that.
    pub fn detect(&self, path: &str, value: &str) -> Vec<Finding> {
        let mut out = Vec::new();
        self.detect_into(path, value, &mut out);
        let cmp: fn(&Finding, &Finding) -> std::cmp::Ordering = |a, b| {
            (a.start, a.end, a.pii_type, a.rule)
                .cmp(&(b.start, b.end, b.pii_type, b.rule))
                .then(b.confidence.total_cmp(&a.confidence))
        };
        out.sort_unstable_by(cmp);
        // Several keywords can report the same span (`aws_secret_access_key`
        // matches three of them): keep the most confident.
        out.dedup_by(|b, a| (a.start, a.end, a.pii_type) == (b.start, b.end, b.pii_type));
        out
    }

    /// Appends every finding in `value` to `out` (unsorted). Findings that
    /// fall inside a `[REDACTED:…]` or `[HASH:…]` marker left by an
    /// earlier scan are dropped, so rewritten text scans clean.
    pub fn detect_into(&self, path: &str, value: &str, out: &mut Vec<Finding>) {
        let base = out.len();
        let mut markers = Markers::default();
        if self.builtin {
            let mut cx = Cx::new(path, value, out);
            fields::detect(&mut cx);
            scan_bytes(&mut cx);
            markers = cx.markers;
        } else {
            markers.find_all(value.as_bytes());
        }
        for d in &self.extra {
            d.detect(path, value, out);
        }
        let mut i = base;
        while i < out.len() {
            let f = out[i];
            let bad = f.start >= f.end
                || f.end > value.len()
                || !value.is_char_boundary(f.start)
                || !value.is_char_boundary(f.end)
                || markers.overlaps(f.start, f.end);
            if bad {
                out.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }
}

/// Findings of the default scanner for `value` at `path` (see
/// [`Scanner::detect`]).
pub fn detect(path: &str, value: &str) -> Vec<Finding> {
    static DEFAULT: OnceLock<Scanner> = OnceLock::new();
    DEFAULT.get_or_init(Scanner::new).detect(path, value)
}

/// Ranges of `[REDACTED:…]` / `[HASH:…]` markers in a value.
#[derive(Default)]
pub(crate) struct Markers {
    spans: Vec<(usize, usize)>,
}

impl Markers {
    fn overlaps(&self, start: usize, end: usize) -> bool {
        self.spans.iter().any(|&(s, e)| start < e && s < end)
    }

    /// The marker starting at `i`, if any: its end.
    fn at(b: &[u8], i: usize) -> Option<usize> {
        let rest = &b[i..];
        if !(rest.starts_with(b"[REDACTED:") || rest.starts_with(b"[HASH:")) {
            return None;
        }
        let close = rest.iter().take(160).position(|&c| c == b']')?;
        let inner = &rest[1..close];
        let ok = inner
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b':' || c == b'-');
        ok.then_some(i + close + 1)
    }

    fn find_all(&mut self, b: &[u8]) {
        for i in memchr::memchr_iter(b'[', b) {
            if let Some(e) = Markers::at(b, i) {
                self.spans.push((i, e));
            }
        }
    }
}

/// Per-value scanning context shared by the detectors.
pub(crate) struct Cx<'a> {
    /// The value.
    pub v: &'a str,
    /// The value's bytes.
    pub b: &'a [u8],
    pub out: &'a mut Vec<Finding>,
    /// The path's last segment, lowercase, letters and digits only.
    path_norm: [u8; 48],
    path_len: usize,
    markers: Markers,
    pub tables: &'static crate::secrets::Tables,
    /// Last PEM END-marker search: (label, position of the END line).
    pub pem_end_cache: Option<(Vec<u8>, Option<usize>)>,
}

impl<'a> Cx<'a> {
    pub(crate) fn new(path: &'a str, v: &'a str, out: &'a mut Vec<Finding>) -> Self {
        let mut path_norm = [0u8; 48];
        let mut path_len = 0;
        let seg = agentfed_guest::last_path_segment(path);
        for c in seg.bytes().filter(u8::is_ascii_alphanumeric) {
            if path_len == path_norm.len() {
                break;
            }
            path_norm[path_len] = c.to_ascii_lowercase();
            path_len += 1;
        }
        Cx {
            v,
            b: v.as_bytes(),
            out,
            path_norm,
            path_len,
            markers: Markers::default(),
            tables: crate::secrets::Tables::get(),
            pem_end_cache: None,
        }
    }

    /// The normalised last path segment (`user_API-Key` → `userapikey`).
    pub(crate) fn path_norm(&self) -> &[u8] {
        &self.path_norm[..self.path_len]
    }

    pub(crate) fn push(
        &mut self,
        ty: &'static str,
        start: usize,
        end: usize,
        conf: f32,
        rule: &'static str,
    ) {
        self.out.push(Finding::new(ty, start, end, conf, rule));
    }

    /// True when one of `words` (lowercase ASCII) appears as a word near
    /// the span `start..end` (up to 48 bytes before or 24 after), or in
    /// the field name (`words` compared with spaces removed).
    pub(crate) fn context(&self, start: usize, end: usize, words: &[&str]) -> bool {
        let path = self.path_norm();
        if !path.is_empty() && words.iter().any(|w| contains_squeezed(path, w.as_bytes())) {
            return true;
        }
        let lo = start.saturating_sub(48);
        let hi = (end + 24).min(self.b.len());
        let before = &self.b[lo..start];
        let after = &self.b[end..hi];
        words
            .iter()
            .any(|w| find_word_ci(before, w.as_bytes()) || find_word_ci(after, w.as_bytes()))
    }
}

/// `needle` (spaces skipped) occurs in `hay`.
fn contains_squeezed(hay: &[u8], needle: &[u8]) -> bool {
    let mut buf = [0u8; 32];
    let mut n = 0;
    for &c in needle.iter().filter(|c| c.is_ascii_alphanumeric()) {
        if n == buf.len() {
            return false;
        }
        buf[n] = c;
        n += 1;
    }
    n > 0 && hay.windows(n).any(|w| w == &buf[..n])
}

/// `word` (lowercase) occurs in `hay`, ASCII case-insensitively, not
/// preceded by a letter.
pub(crate) fn find_word_ci(hay: &[u8], word: &[u8]) -> bool {
    if word.is_empty() || hay.len() < word.len() {
        return false;
    }
    let first = word[0];
    (0..=hay.len() - word.len()).any(|i| {
        hay[i].to_ascii_lowercase() == first
            && (i == 0 || !hay[i - 1].is_ascii_alphabetic())
            && hay[i..i + word.len()].eq_ignore_ascii_case(word)
    })
}

/// Byte classes for the main loop.
const OTHER: u8 = 0;
const DIGIT: u8 = 1;
const ALPHA: u8 = 2;
const AT: u8 = 3;
const COLON: u8 = 4;
const DASH: u8 = 5;
const BRACKET: u8 = 6;
const TILDE: u8 = 7;

static CLASS: [u8; 256] = {
    let mut t = [OTHER; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = if b.is_ascii_digit() {
            DIGIT
        } else if b.is_ascii_alphabetic() {
            ALPHA
        } else {
            match b {
                b'@' => AT,
                b':' => COLON,
                b'-' => DASH,
                b'[' => BRACKET,
                b'~' => TILDE,
                _ => OTHER,
            }
        };
        c += 1;
    }
    t
};

#[inline]
pub(crate) fn is_alnum(c: u8) -> bool {
    c.is_ascii_alphanumeric()
}

/// The end of the ASCII alphanumeric run starting at `i`.
#[inline]
pub(crate) fn skip_alnum(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_alnum(b[i]) {
        i += 1;
    }
    i
}

fn scan_bytes(cx: &mut Cx<'_>) {
    let b = cx.b;
    let n = b.len();
    let mut i = 0;
    while i < n {
        let c = b[i];
        let class = CLASS[c as usize];
        let next = match class {
            DIGIT | ALPHA => {
                if i > 0 && is_alnum(b[i - 1]) {
                    skip_alnum(b, i)
                } else if class == DIGIT {
                    numeric::run(cx, i)
                } else {
                    words::token(cx, i)
                }
            }
            AT => net::email(cx, i),
            COLON => net::colon(cx, i),
            DASH => secrets::dash(cx, i),
            BRACKET => match Markers::at(b, i) {
                Some(e) => {
                    cx.markers.spans.push((i, e));
                    e
                }
                None => i + 1,
            },
            TILDE => secrets::tilde(cx, i),
            _ => i + 1,
        };
        debug_assert!(next > i);
        i = next.max(i + 1);
    }
}
