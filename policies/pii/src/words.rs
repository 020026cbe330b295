//! Detectors anchored on a token that starts with a letter: provider
//! prefixes and keywords (delegated to `secrets`), titled names, IBANs and
//! letter-bearing national identifiers; plus street addresses (started
//! from a house number by `numeric`).

use crate::finding::types;
use crate::scanner::{Cx, is_alnum};
use crate::{secrets, validate};

const LO: u8 = 1;
const UP: u8 = 2;
const DG: u8 = 3;

/// ASCII letters and digits by kind; 0 for everything else.
static TOK: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = if b.is_ascii_lowercase() {
            LO
        } else if b.is_ascii_uppercase() {
            UP
        } else if b.is_ascii_digit() {
            DG
        } else {
            0
        };
        c += 1;
    }
    t
};

/// Scans the token starting at `i` (a letter at a token start); returns
/// where scanning resumes.
pub(crate) fn token(cx: &mut Cx<'_>, i: usize) -> usize {
    let b = cx.b;
    let first = b[i];
    let tables = cx.tables;
    let anything = tables.anything_at(b, i);
    if anything && tables.keyword_at(b, i) {
        secrets::keyword(cx, i);
    }
    let mut j = i + 1;
    let mut has_digit = false;
    let mut prev = TOK[first as usize];
    while j < b.len() {
        let c = TOK[b[j] as usize];
        if c == 0 {
            break;
        }
        if c == DG {
            has_digit = true;
        } else if c == UP && prev == LO && tables.keyword_at(b, j) {
            // camelCase keyword: `dbPassword`, `clientSecret`.
            secrets::keyword(cx, j);
        }
        prev = c;
        j += 1;
    }
    let mut next = j;
    if anything
        && tables.rule_at(b, i)
        && let Some(e) = secrets::prefixes(cx, i)
    {
        next = next.max(e);
    }
    if matches!(first, b'M' | b'D' | b'P') {
        title(cx, i, j);
    }
    if first.is_ascii_uppercase() {
        if has_digit {
            if let Some(e) = ids(cx, i, j) {
                next = next.max(e);
            }
        } else if j - i == 2
            && b[i + 1].is_ascii_uppercase()
            && let Some(e) = spaced_nino(cx, i, j)
        {
            next = next.max(e);
        }
    }
    next
}

const TITLES: &[&[u8]] = &[b"Mr", b"Mrs", b"Ms", b"Mx", b"Dr", b"Prof", b"Professor"];

/// `Dr. Jane Smith`, `Mrs O'Brien`, `Prof. J. R. Tolkien`, `Dr. Müller`.
#[inline(never)]
fn title(cx: &mut Cx<'_>, i: usize, j: usize) {
    let b = cx.b;
    if !TITLES.contains(&&b[i..j]) {
        return;
    }
    let mut k = j;
    if b.get(k) == Some(&b'.') {
        k += 1;
    }
    if b.get(k) != Some(&b' ') {
        return;
    }
    k += 1;
    let v = cx.v;
    let mut last_word_end = None;
    let mut words = 0;
    for _ in 0..4 {
        let Some((end, is_word)) = name_element(v, k) else {
            break;
        };
        if is_word {
            words += 1;
            last_word_end = Some(end);
        }
        let continues = b.get(end) == Some(&b' ')
            && v[end + 1..].chars().next().is_some_and(char::is_uppercase);
        if !continues {
            break;
        }
        k = end + 1;
    }
    if let Some(e) = last_word_end {
        let conf = if words >= 2 { 0.85 } else { 0.7 };
        cx.push(types::NAME, i, e, conf, "titled_name");
    }
}

/// A capitalised name word (`Smith`, `O'Brien`, `Smith-Jones`, `Müller`)
/// or an initial (`J.`) at `k`: its end and whether it is a word.
fn name_element(v: &str, k: usize) -> Option<(usize, bool)> {
    let rest = v.get(k..)?;
    let mut it = rest.chars().peekable();
    let c0 = it.next()?;
    if !c0.is_uppercase() {
        return None;
    }
    let mut end = k + c0.len_utf8();
    let mut letters = 1;
    let mut all_upper = true;
    while let Some(c) = it.next() {
        if c.is_alphabetic() {
            letters += 1;
            all_upper &= c.is_uppercase();
            end += c.len_utf8();
        } else if matches!(c, '\'' | '’' | '-') && it.peek().is_some_and(|d| d.is_alphabetic()) {
            end += c.len_utf8();
        } else {
            break;
        }
    }
    if letters == 1 {
        return (v.as_bytes().get(end) == Some(&b'.')).then_some((end + 1, false));
    }
    if all_upper {
        return None;
    }
    Some((end, true))
}

const SUFFIXES: &[(&[u8], bool)] = &[
    // (word, is an abbreviation that may take a period)
    (b"Street", false),
    (b"St", true),
    (b"Avenue", false),
    (b"Ave", true),
    (b"Av", true),
    (b"Road", false),
    (b"Rd", true),
    (b"Boulevard", false),
    (b"Blvd", true),
    (b"Lane", false),
    (b"Ln", true),
    (b"Drive", false),
    (b"Dr", true),
    (b"Court", false),
    (b"Ct", true),
    (b"Place", false),
    (b"Pl", true),
    (b"Terrace", false),
    (b"Ter", true),
    (b"Parkway", false),
    (b"Pkwy", true),
    (b"Highway", false),
    (b"Hwy", true),
    (b"Circle", false),
    (b"Cir", true),
    (b"Trail", false),
    (b"Trl", true),
    (b"Alley", false),
    (b"Crescent", false),
    (b"Cres", true),
    (b"Square", false),
    (b"Sq", true),
    (b"Way", false),
    (b"Plaza", false),
    (b"Expressway", false),
    (b"Expy", true),
    (b"Freeway", false),
    (b"Fwy", true),
    (b"Turnpike", false),
    (b"Close", false),
    (b"Mews", false),
    (b"Loop", false),
];

/// The suffix entry for `w` in Title case or ALL CAPS.
fn suffix(w: &[u8]) -> Option<bool> {
    SUFFIXES.iter().find_map(|&(s, abbr)| {
        let title = w == s;
        let caps =
            w.len() == s.len() && w.iter().zip(s).all(|(&a, &c)| a == c.to_ascii_uppercase());
        (title || caps).then_some(abbr)
    })
}

fn street_word(w: &[u8]) -> bool {
    if w.is_empty() {
        return false;
    }
    let directional = matches!(w, b"N" | b"S" | b"E" | b"W" | b"NE" | b"NW" | b"SE" | b"SW");
    let ordinal = {
        let d = w.iter().take_while(|c| c.is_ascii_digit()).count();
        d > 0
            && d + 2 == w.len()
            && matches!(
                &w[d..].to_ascii_lowercase()[..],
                b"st" | b"nd" | b"rd" | b"th"
            )
    };
    let capitalised =
        w.len() >= 2 && w[0].is_ascii_uppercase() && w[1..].iter().all(u8::is_ascii_lowercase);
    let caps = w.len() >= 2 && w.iter().all(u8::is_ascii_uppercase);
    directional || ordinal || capitalised || caps
}

fn word_end(b: &[u8], s: usize) -> usize {
    let mut e = s;
    while e < b.len()
        && (is_alnum(b[e])
            || (b[e] == b'\'' && e > s && e + 1 < b.len() && b[e + 1].is_ascii_alphabetic()))
    {
        e += 1;
    }
    e
}

/// A street address whose house number spans `i..num_end`:
/// `123 Main St`, `1600 Pennsylvania Avenue NW, Washington, DC 20500`,
/// `221B Baker Street`, `42 W 5th Ave, Apt 4B`.
#[inline(never)]
pub(crate) fn address(cx: &mut Cx<'_>, i: usize, num_end: usize) {
    let b = cx.b;
    if b[i] == b'0' {
        return;
    }
    if i > 0
        && matches!(
            b[i - 1],
            b'$' | b'#' | b'.' | b',' | b'-' | b'/' | b'+' | b'%' | b'x'
        )
    {
        return;
    }
    let mut k = num_end;
    let mut end = None;
    for name_words in 0..6 {
        if b.get(k) != Some(&b' ') {
            break;
        }
        let ws = k + 1;
        let we = word_end(b, ws);
        if we == ws {
            break;
        }
        let w = &b[ws..we];
        let dot = b.get(we) == Some(&b'.');
        if name_words >= 1
            && let Some(abbr) = suffix(w)
        {
            end = Some(if dot && abbr { we + 1 } else { we });
            break;
        }
        if !street_word(w) {
            break;
        }
        k = if dot && w.len() <= 2 { we + 1 } else { we };
    }
    let Some(mut e) = end else {
        return;
    };
    // Post-directional: `Avenue NW`.
    if b.get(e) == Some(&b' ') {
        let we = word_end(b, e + 1);
        if matches!(
            &b[e + 1..we],
            b"N" | b"S" | b"E" | b"W" | b"NE" | b"NW" | b"SE" | b"SW"
        ) && (we == b.len() || !is_alnum(b[we]))
        {
            e = we;
        }
    }
    let mut conf = 0.8;
    if let Some(e2) = unit(b, e) {
        e = e2;
        conf = 0.85;
    }
    if let Some(e2) = city_state_zip(b, e) {
        e = e2;
        conf = 0.9;
    }
    cx.push(types::ADDRESS, i, e, conf, "street_address");
}

/// `, Apt 4B`, ` Suite 200`, ` #12`.
fn unit(b: &[u8], e: usize) -> Option<usize> {
    let mut k = e;
    if b.get(k) == Some(&b',') {
        k += 1;
    }
    if b.get(k) != Some(&b' ') {
        return None;
    }
    k += 1;
    if b.get(k) == Some(&b'#') {
        k += 1;
    } else {
        let we = word_end(b, k);
        let w = &b[k..we];
        const UNITS: &[&[u8]] = &[
            b"Apt",
            b"Apartment",
            b"Suite",
            b"Ste",
            b"Unit",
            b"Fl",
            b"Floor",
            b"Rm",
            b"Room",
            b"Bldg",
            b"Building",
            b"APT",
            b"SUITE",
            b"STE",
            b"UNIT",
        ];
        if !UNITS.contains(&w) {
            return None;
        }
        k = we;
        if b.get(k) == Some(&b'.') {
            k += 1;
        }
        if b.get(k) == Some(&b' ') {
            k += 1;
        }
    }
    let te = word_end(b, k);
    let t = &b[k..te];
    if t.is_empty() || t.len() > 6 || !(t.iter().any(u8::is_ascii_digit) || t.len() == 1) {
        return None;
    }
    Some(te)
}

/// `, Springfield, IL 62704` or `, Washington, DC`.
fn city_state_zip(b: &[u8], e: usize) -> Option<usize> {
    let mut k = e;
    if !b[k..].starts_with(b", ") {
        return None;
    }
    k += 2;
    let mut words = 0;
    loop {
        let we = word_end(b, k);
        let w = &b[k..we];
        if w.len() < 2 || !w[0].is_ascii_uppercase() || !w[1..].iter().all(u8::is_ascii_alphabetic)
        {
            return None;
        }
        words += 1;
        k = we;
        if b[k..].starts_with(b", ") {
            k += 2;
            break;
        }
        if words == 3 || b.get(k) != Some(&b' ') {
            return None;
        }
        k += 1;
    }
    if k + 2 > b.len() || !b[k..k + 2].iter().all(u8::is_ascii_uppercase) {
        return None;
    }
    k += 2;
    if k < b.len() && is_alnum(b[k]) {
        return None;
    }
    if b.get(k) == Some(&b' ') && b.len() >= k + 6 && validate::all_digits(&b[k + 1..k + 6]) {
        let mut z = k + 6;
        if b.get(z) == Some(&b'-') && b.len() >= z + 5 && validate::all_digits(&b[z + 1..z + 5]) {
            z += 5;
        }
        if z == b.len() || !is_alnum(b[z]) {
            k = z;
        }
    }
    Some(k)
}

const PAN_CTX: &[&str] = &["pan", "permanent account"];
const PASSPORT_CTX: &[&str] = &["passport"];

/// Uppercase tokens with digits: IBAN, UK NINO, Spanish NIE, Singapore
/// NRIC/FIN, Italian fiscal code, Indian PAN (in context), passports.
#[inline(never)]
fn ids(cx: &mut Cx<'_>, i: usize, j: usize) -> Option<usize> {
    let b = cx.b;
    let tok = &b[i..j];
    if tok.len() >= 4
        && tok[1].is_ascii_uppercase()
        && validate::all_digits(&tok[2..4])
        && let Some(e) = iban(cx, i)
    {
        return Some(e);
    }
    match tok.len() {
        9 => {
            if validate::uk_nino(tok) {
                cx.push(types::SSN, i, j, 0.85, "uk_nino");
            } else if validate::es_nie(tok) {
                cx.push(types::SSN, i, j, 0.8, "es_nie");
            } else if validate::sg_nric(tok) {
                cx.push(types::SSN, i, j, 0.75, "sg_nric");
            } else if validate::all_digits(&tok[1..]) && cx.context(i, j, PASSPORT_CTX) {
                cx.push(types::SSN, i, j, 0.6, "us_passport");
            }
        }
        10 if validate::in_pan(tok) && cx.context(i, j, PAN_CTX) => {
            cx.push(types::SSN, i, j, 0.75, "in_pan");
        }
        16 if validate::it_fiscal_code(tok) => {
            cx.push(types::SSN, i, j, 0.9, "it_fiscal_code");
        }
        _ => {}
    }
    None
}

/// An IBAN at `i`, compact or in groups of four (`DE89 3704 0044 …`).
fn iban(cx: &mut Cx<'_>, i: usize) -> Option<usize> {
    let b = cx.b;
    let want = validate::iban_length(&b[i..i + 2])?;
    let mut buf = [0u8; 34];
    let mut n = 0;
    let mut k = i;
    while k < b.len() && n < want {
        let c = b[k];
        if c.is_ascii_digit() || c.is_ascii_uppercase() {
            buf[n] = c;
            n += 1;
            k += 1;
        } else if c == b' ' && n % 4 == 0 && k + 1 < b.len() && is_alnum(b[k + 1]) {
            k += 1;
        } else {
            break;
        }
    }
    if n != want || (k < b.len() && is_alnum(b[k])) || !validate::iban(&buf[..n]) {
        return None;
    }
    cx.push(types::CREDIT_CARD, i, k, 0.95, "iban");
    Some(k)
}

/// `AB 12 34 56 C`.
#[inline(never)]
fn spaced_nino(cx: &mut Cx<'_>, i: usize, j: usize) -> Option<usize> {
    let b = cx.b;
    let e = j + 11;
    if b.len() < e {
        return None;
    }
    let s = &b[j..e];
    let shape = s[0] == b' '
        && s[3] == b' '
        && s[6] == b' '
        && s[9] == b' '
        && validate::all_digits(&s[1..3])
        && validate::all_digits(&s[4..6])
        && validate::all_digits(&s[7..9]);
    if !shape || (e < b.len() && is_alnum(b[e])) {
        return None;
    }
    let mut compact = [0u8; 9];
    compact[..2].copy_from_slice(&b[i..j]);
    compact[2..4].copy_from_slice(&s[1..3]);
    compact[4..6].copy_from_slice(&s[4..6]);
    compact[6..8].copy_from_slice(&s[7..9]);
    compact[8] = s[10];
    if !validate::uk_nino(&compact) {
        return None;
    }
    cx.push(types::SSN, i, e, 0.85, "uk_nino");
    Some(e)
}
