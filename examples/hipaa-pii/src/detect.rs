//! The medical-identifier detector and its validators.

use agentfed_guest::last_path_segment;
use agentfed_policy_pii::{Detector, Finding, validate};

use crate::types::{
    DATE_OF_BIRTH, DEA_NUMBER, DIAGNOSIS_CODE, HEALTH_PLAN_ID, MEDICAL_RECORD_NUMBER, NPI,
};

/// What a context phrase introduces.
#[derive(Clone, Copy)]
enum Ctx {
    Mrn,
    Plan,
    Npi,
    Dea,
    Diagnosis,
    Dob,
}

/// Context phrases, lowercase, matched at word starts. Longer phrases
/// first where one is a prefix of another.
const PHRASES: &[(&str, Ctx)] = &[
    ("mrn", Ctx::Mrn),
    ("medical record number", Ctx::Mrn),
    ("medical record no", Ctx::Mrn),
    ("medical record", Ctx::Mrn),
    ("med rec", Ctx::Mrn),
    ("chart number", Ctx::Mrn),
    ("chart no", Ctx::Mrn),
    ("patient id", Ctx::Mrn),
    ("patient number", Ctx::Mrn),
    ("member id", Ctx::Plan),
    ("member number", Ctx::Plan),
    ("member no", Ctx::Plan),
    ("member #", Ctx::Plan),
    ("subscriber id", Ctx::Plan),
    ("subscriber number", Ctx::Plan),
    ("policy number", Ctx::Plan),
    ("policy no", Ctx::Plan),
    ("policy #", Ctx::Plan),
    ("health plan id", Ctx::Plan),
    ("health plan number", Ctx::Plan),
    ("insurance id", Ctx::Plan),
    ("beneficiary id", Ctx::Plan),
    ("beneficiary number", Ctx::Plan),
    ("medicaid id", Ctx::Plan),
    ("medicaid number", Ctx::Plan),
    ("medicare number", Ctx::Plan),
    ("mbi", Ctx::Plan),
    ("hicn", Ctx::Plan),
    ("group number", Ctx::Plan),
    ("npi", Ctx::Npi),
    ("national provider identifier", Ctx::Npi),
    ("national provider id", Ctx::Npi),
    ("dea", Ctx::Dea),
    ("diagnosis", Ctx::Diagnosis),
    ("diagnoses", Ctx::Diagnosis),
    ("diagnosed", Ctx::Diagnosis),
    ("dx", Ctx::Diagnosis),
    ("ddx", Ctx::Diagnosis),
    ("icd-10-cm", Ctx::Diagnosis),
    ("icd-10", Ctx::Diagnosis),
    ("icd10", Ctx::Diagnosis),
    ("icd", Ctx::Diagnosis),
    ("dob", Ctx::Dob),
    ("d.o.b", Ctx::Dob),
    ("date of birth", Ctx::Dob),
    ("birth date", Ctx::Dob),
    ("birthdate", Ctx::Dob),
    ("born on", Ctx::Dob),
    ("born", Ctx::Dob),
];

/// Finds medical identifiers (see the crate docs for the rules).
pub struct MedicalDetector;

impl Detector for MedicalDetector {
    fn detect(&self, path: &str, value: &str, out: &mut Vec<Finding>) {
        field(path, value, out);
        let b = value.as_bytes();
        let mut dea_context_end = 0;
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            if !c.is_ascii_alphanumeric() || (i > 0 && b[i - 1].is_ascii_alphanumeric()) {
                i += 1;
                continue;
            }
            // A word start: context phrases, then format-anchored ids.
            if c.is_ascii_alphabetic()
                && let Some((len, ctx)) = phrase_at(b, i)
            {
                let p = i + len;
                match ctx {
                    Ctx::Mrn => id_after(b, p, MEDICAL_RECORD_NUMBER, 0.9, out),
                    Ctx::Plan => id_after(b, p, HEALTH_PLAN_ID, 0.85, out),
                    Ctx::Npi => npi_after(b, p, out),
                    Ctx::Dea => dea_context_end = p + 16,
                    Ctx::Diagnosis => icd_after(b, p, out),
                    Ctx::Dob => dob_after(b, p, out),
                }
            }
            let mut e = i;
            while e < b.len() && b[e].is_ascii_alphanumeric() {
                e += 1;
            }
            let tok = &b[i..e];
            if tok.len() == 9 && dea_number_valid(tok) {
                let conf = if i <= dea_context_end { 0.95 } else { 0.7 };
                out.push(Finding::new(DEA_NUMBER, i, e, conf, "dea_number"));
            }
            if tok.len() == 11 && mbi_valid(tok) {
                out.push(Finding::new(HEALTH_PLAN_ID, i, e, 0.85, "medicare_mbi"));
            }
            // Dashed MBI: 1EG4-TE5-MK73.
            if tok.len() == 4 && b.len() >= i + 13 && b[i + 4] == b'-' && b[i + 8] == b'-' {
                let mut compact = [0u8; 11];
                compact[..4].copy_from_slice(&b[i..i + 4]);
                compact[4..7].copy_from_slice(&b[i + 5..i + 8]);
                compact[7..].copy_from_slice(&b[i + 9..i + 13]);
                let end_ok = b.len() == i + 13 || !b[i + 13].is_ascii_alphanumeric();
                if end_ok && mbi_valid(&compact) {
                    out.push(Finding::new(
                        HEALTH_PLAN_ID,
                        i,
                        i + 13,
                        0.85,
                        "medicare_mbi",
                    ));
                }
            }
            i = e.max(i + 1);
        }
    }
}

/// Bit `c - 'a'` is set when some phrase starts with letter `c`.
const FIRST_LETTERS: u32 = {
    let mut bits = 0u32;
    let mut i = 0;
    while i < PHRASES.len() {
        bits |= 1 << (PHRASES[i].0.as_bytes()[0] - b'a');
        i += 1;
    }
    bits
};

/// The context phrase at word start `i`, if any: its length and kind.
fn phrase_at(b: &[u8], i: usize) -> Option<(usize, Ctx)> {
    let c = b[i].to_ascii_lowercase();
    if !c.is_ascii_lowercase() || FIRST_LETTERS & (1 << (c - b'a')) == 0 {
        return None;
    }
    PHRASES.iter().find_map(|&(p, ctx)| {
        let p = p.as_bytes();
        let end = i + p.len();
        let matches = b.len() >= end
            && b[i..end].eq_ignore_ascii_case(p)
            && (end == b.len() || !b[end].is_ascii_alphabetic());
        matches.then_some((p.len(), ctx))
    })
}

/// Skips `: `, `#`, `=`, quotes and filler words (`number`, `no`, `is`)
/// between a context phrase and its value.
fn skip_filler(b: &[u8], mut p: usize) -> usize {
    for _ in 0..4 {
        let start = p;
        while p < b.len()
            && matches!(
                b[p],
                b' ' | b'\t' | b':' | b'#' | b'=' | b'-' | b'.' | b'"' | b'\''
            )
        {
            p += 1;
        }
        let mut e = p;
        while e < b.len() && b[e].is_ascii_alphabetic() {
            e += 1;
        }
        let word = &b[p..e];
        if ["number", "no", "num", "id", "is", "of", "was", "on"]
            .iter()
            .any(|w| word.eq_ignore_ascii_case(w.as_bytes()))
        {
            p = e;
        } else if p == start {
            break;
        }
    }
    p
}

/// An identifier after a context phrase: 4–20 letters, digits and inner
/// dashes with at least four digits.
fn id_after(b: &[u8], p: usize, ty: &'static str, conf: f32, out: &mut Vec<Finding>) {
    let s = skip_filler(b, p);
    let mut e = s;
    while e < b.len() && (b[e].is_ascii_alphanumeric() || (b[e] == b'-' && e > s)) {
        e += 1;
    }
    while e > s && b[e - 1] == b'-' {
        e -= 1;
    }
    let tok = &b[s..e];
    let digits = tok.iter().filter(|c| c.is_ascii_digit()).count();
    if (4..=20).contains(&tok.len()) && digits >= 4 {
        out.push(Finding::new(ty, s, e, conf, "medical_id_context"));
    }
}

fn npi_after(b: &[u8], p: usize, out: &mut Vec<Finding>) {
    let s = skip_filler(b, p);
    let mut e = s;
    while e < b.len() && b[e].is_ascii_digit() {
        e += 1;
    }
    let boundary = e == b.len() || !b[e].is_ascii_alphanumeric();
    if boundary && npi_valid(&b[s..e]) {
        out.push(Finding::new(NPI, s, e, 0.95, "npi"));
    }
}

/// ICD-10 codes in the 80 bytes after a diagnosis phrase (stops at a line
/// break): `Dx: E11.9, I10`.
fn icd_after(b: &[u8], p: usize, out: &mut Vec<Finding>) {
    let lim = (p + 80).min(b.len());
    let mut i = p;
    while i < lim && b[i] != b'\n' {
        if b[i].is_ascii_uppercase() && (i == 0 || !b[i - 1].is_ascii_alphanumeric()) {
            let mut e = i;
            while e < b.len() && (b[e].is_ascii_alphanumeric() || b[e] == b'.') {
                e += 1;
            }
            while e > i && b[e - 1] == b'.' {
                e -= 1;
            }
            if icd10_shape(&b[i..e]) {
                out.push(Finding::new(DIAGNOSIS_CODE, i, e, 0.85, "icd10"));
            }
            i = e.max(i + 1);
        } else {
            i += 1;
        }
    }
}

fn dob_after(b: &[u8], p: usize, out: &mut Vec<Finding>) {
    let s = skip_filler(b, p);
    if let Some(e) = parse_date(b, s) {
        out.push(Finding::new(DATE_OF_BIRTH, s, e, 0.9, "date_of_birth"));
    }
}

/// Whole-value findings for medically named fields.
fn field(path: &str, value: &str, out: &mut Vec<Finding>) {
    let seg = last_path_segment(path);
    let name: String = seg
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if name.is_empty() {
        return;
    }
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return;
    }
    let s = value.len() - value.trim_start().len();
    let e = s + trimmed.len();
    let t = trimmed.as_bytes();
    let digits = t.iter().filter(|c| c.is_ascii_digit()).count();
    let is = |names: &[&str]| names.contains(&name.as_str());
    let found = if is(&[
        "mrn",
        "medicalrecordnumber",
        "medicalrecord",
        "patientmrn",
        "chartnumber",
    ]) {
        (digits >= 4).then_some(MEDICAL_RECORD_NUMBER)
    } else if is(&[
        "memberid",
        "subscriberid",
        "policynumber",
        "healthplanid",
        "insuranceid",
        "mbi",
        "medicareid",
        "medicaidid",
        "beneficiaryid",
        "hicn",
        "groupnumber",
    ]) {
        (digits >= 4).then_some(HEALTH_PLAN_ID)
    } else if is(&["npi", "providernpi"]) {
        npi_valid(t).then_some(NPI)
    } else if is(&["dea", "deanumber"]) {
        dea_number_valid(t).then_some(DEA_NUMBER)
    } else if is(&["dob", "dateofbirth", "birthdate", "birthday", "patientdob"]) {
        (parse_date(t, 0) == Some(t.len())).then_some(DATE_OF_BIRTH)
    } else if is(&["icd10", "icdcode", "icd10code", "diagnosiscode", "dxcode"]) {
        icd10_shape(t).then_some(DIAGNOSIS_CODE)
    } else {
        None
    };
    if let Some(ty) = found {
        out.push(Finding::new(ty, s, e, 0.9, "medical_field"));
    }
}

/// A National Provider Identifier: ten digits starting with 1 or 2 whose
/// check digit is the Luhn digit of `80840` followed by the number.
pub fn npi_valid(d: &[u8]) -> bool {
    if d.len() != 10 || !validate::all_digits(d) || !matches!(d[0], b'1' | b'2') {
        return false;
    }
    let mut full = [0u8; 15];
    full[..5].copy_from_slice(b"80840");
    full[5..].copy_from_slice(d);
    validate::luhn(&full)
}

/// A DEA registration number: a registrant-type letter, a second letter
/// (or `9`), six digits and a check digit equal to the last digit of
/// `(d1 + d3 + d5) + 2 × (d2 + d4 + d6)`.
pub fn dea_number_valid(s: &[u8]) -> bool {
    if s.len() != 9
        || !b"ABCDEFGHJKLMPRSTUX".contains(&s[0])
        || !(s[1].is_ascii_uppercase() || s[1] == b'9')
        || !validate::all_digits(&s[2..])
    {
        return false;
    }
    let d: Vec<u32> = s[2..].iter().map(|&c| u32::from(c - b'0')).collect();
    let sum = d[0] + d[2] + d[4] + 2 * (d[1] + d[3] + d[5]);
    sum % 10 == d[6]
}

/// A Medicare Beneficiary Identifier without dashes (11 characters,
/// uppercase): `C A AN N A AN N A A N N`, where C is 1–9, N is 0–9, A is
/// a letter other than S, L, O, I, B, Z, and AN is either.
pub fn mbi_valid(s: &[u8]) -> bool {
    const ALPHA_OK: fn(u8) -> bool = |c| c.is_ascii_uppercase() && !b"SLOIBZ".contains(&c);
    if s.len() != 11 {
        return false;
    }
    let n = |c: u8| c.is_ascii_digit();
    let an = |c: u8| n(c) || ALPHA_OK(c);
    (b'1'..=b'9').contains(&s[0])
        && ALPHA_OK(s[1])
        && an(s[2])
        && n(s[3])
        && ALPHA_OK(s[4])
        && an(s[5])
        && n(s[6])
        && ALPHA_OK(s[7])
        && ALPHA_OK(s[8])
        && n(s[9])
        && n(s[10])
}

/// The shape of an ICD-10-CM code: a letter, a digit, a digit (or a letter
/// when a subcategory follows), then optionally `.` and 1–4 letters or
/// digits: `I10`, `E11.9`, `J45.909`, `S72.001A`, `C4A.0`.
pub fn icd10_shape(s: &[u8]) -> bool {
    if s.len() < 3 || s.len() > 8 || !s[0].is_ascii_uppercase() || !s[1].is_ascii_digit() {
        return false;
    }
    let third_digit = s[2].is_ascii_digit();
    if s.len() == 3 {
        return third_digit;
    }
    let tail = &s[4..];
    (third_digit || s[2].is_ascii_uppercase())
        && s[3] == b'.'
        && (1..=4).contains(&tail.len())
        && tail
            .iter()
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
}

const MONTHS: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

fn number(b: &[u8], p: usize, max: usize) -> (u32, usize) {
    let mut e = p;
    let mut v = 0;
    while e < b.len() && e - p < max && b[e].is_ascii_digit() {
        v = v * 10 + u32::from(b[e] - b'0');
        e += 1;
    }
    (v, e)
}

fn valid_day(month: u32, day: u32) -> bool {
    let max = match month {
        2 => 29,
        4 | 6 | 9 | 11 => 30,
        1..=12 => 31,
        _ => return false,
    };
    (1..=max).contains(&day)
}

fn month_at(b: &[u8], p: usize) -> Option<(u32, usize)> {
    let mut e = p;
    while e < b.len() && b[e].is_ascii_alphabetic() {
        e += 1;
    }
    let w = &b[p..e];
    if w.len() < 3 {
        return None;
    }
    let m = MONTHS.iter().position(|name| {
        let name = name.as_bytes();
        w.eq_ignore_ascii_case(name)
            || (w.len() == 3 && w.eq_ignore_ascii_case(&name[..3]))
            || (w.len() == 4 && w.eq_ignore_ascii_case(b"sept") && name.starts_with(b"sep"))
    })?;
    if b.get(e) == Some(&b'.') {
        e += 1;
    }
    Some((m as u32 + 1, e))
}

/// Parses a calendar date starting at `p` and returns its end:
/// `04/12/1985`, `4-12-85`, `12.04.1985`, `1985-04-12`, `March 3, 1990`,
/// `3 Mar 1990`. Month and day must exist (either order for numeric
/// dates); four-digit years are 1880–2100.
pub fn parse_date(b: &[u8], p: usize) -> Option<usize> {
    let end_ok = |e: usize| e == b.len() || !b[e].is_ascii_alphanumeric();
    let year_ok = |y: u32, digits: usize| digits == 2 || (1880..=2100).contains(&y);
    if p >= b.len() {
        return None;
    }
    if b[p].is_ascii_digit() {
        let (a, e1) = number(b, p, 4);
        let sep = *b.get(e1)?;
        if !matches!(sep, b'/' | b'-' | b'.') {
            // `3 March 1990`.
            if sep == b' ' && e1 - p <= 2 {
                let (m, e2) = month_at(b, e1 + 1)?;
                let mut e = e2;
                if b.get(e) == Some(&b',') {
                    e += 1;
                }
                if b.get(e) != Some(&b' ') {
                    return None;
                }
                let (y, e3) = number(b, e + 1, 4);
                return (e3 - e - 1 == 4 && year_ok(y, 4) && valid_day(m, a) && end_ok(e3))
                    .then_some(e3);
            }
            return None;
        }
        let (m2, e2) = number(b, e1 + 1, 2);
        if e2 == e1 + 1 || b.get(e2) != Some(&sep) {
            return None;
        }
        let (c, e3) = number(b, e2 + 1, 4);
        let (ld, cd) = (e1 - p, e3 - e2 - 1);
        if !end_ok(e3) {
            return None;
        }
        if ld == 4 {
            return (year_ok(a, 4) && cd <= 2 && valid_day(m2, c)).then_some(e3);
        }
        if ld > 2 || !(cd == 2 || cd == 4) || !year_ok(c, cd) {
            return None;
        }
        return (valid_day(a, m2) || valid_day(m2, a)).then_some(e3);
    }
    // `March 3, 1990`, `Mar 3rd 1990`.
    let (m, e1) = month_at(b, p)?;
    if b.get(e1) != Some(&b' ') {
        return None;
    }
    let (d, mut e) = number(b, e1 + 1, 2);
    if e == e1 + 1 {
        return None;
    }
    for suffix in ["st", "nd", "rd", "th"] {
        if b.len() >= e + 2 && b[e..e + 2].eq_ignore_ascii_case(suffix.as_bytes()) {
            e += 2;
            break;
        }
    }
    if b.get(e) == Some(&b',') {
        e += 1;
    }
    if b.get(e) != Some(&b' ') {
        return None;
    }
    let (y, e3) = number(b, e + 1, 4);
    (e3 - e - 1 == 4 && year_ok(y, 4) && valid_day(m, d) && end_ok(e3)).then_some(e3)
}
