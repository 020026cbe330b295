//! Checksums and format validators used by the detectors.
//!
//! They are public so that extension plugins (see `examples/hipaa-pii`)
//! can reuse them. Unless stated otherwise a function takes the *ASCII
//! digits only* of a candidate (separators already removed) and returns
//! `false` for anything malformed rather than panicking.

/// Numeric value of an ASCII digit (no check).
#[inline]
fn dv(b: u8) -> u32 {
    u32::from(b.wrapping_sub(b'0'))
}

/// True when every byte is an ASCII digit and there is at least one.
pub fn all_digits(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(u8::is_ascii_digit)
}

/// The number formed by the first `n` digits of `d` (all must be digits).
pub fn leading_number(d: &[u8], n: usize) -> u32 {
    d.iter().take(n).fold(0, |acc, &b| acc * 10 + dv(b))
}

/// Luhn (mod 10) check over ASCII digits: payment cards, NPI (with the
/// `80840` prefix), IMEI, Canadian SIN.
pub fn luhn(d: &[u8]) -> bool {
    if !all_digits(d) {
        return false;
    }
    let mut sum = 0;
    for (i, &b) in d.iter().rev().enumerate() {
        let mut v = dv(b);
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// The card network for a digit string, from its issuer identification
/// number (IIN) prefix and length, or `None` when no network issues such
/// a number. The Luhn check is separate ([`luhn`]).
pub fn card_brand(d: &[u8]) -> Option<&'static str> {
    if !all_digits(d) || d.len() < 12 || d.len() > 19 {
        return None;
    }
    let len = d.len();
    let p1 = leading_number(d, 1);
    let p2 = leading_number(d, 2);
    let p3 = leading_number(d, 3);
    let p4 = leading_number(d, 4);
    let p6 = leading_number(d, 6);
    let l = |lens: &[usize]| lens.contains(&len);
    let r = |lo: usize, hi: usize| (lo..=hi).contains(&len);
    if p1 == 4 && l(&[13, 16, 19]) {
        return Some("visa");
    }
    if ((51..=55).contains(&p2) || (2221..=2720).contains(&p4)) && len == 16 {
        return Some("mastercard");
    }
    if (p2 == 34 || p2 == 37) && len == 15 {
        return Some("amex");
    }
    if (2200..=2204).contains(&p4) && r(16, 19) {
        return Some("mir");
    }
    if (p4 == 6011 || (644..=649).contains(&p3) || p2 == 65 || (622126..=622925).contains(&p6))
        && r(16, 19)
    {
        return Some("discover");
    }
    if ((300..=305).contains(&p3) || p2 == 36 || p2 == 38 || p2 == 39) && r(14, 19) {
        return Some("diners");
    }
    if (3528..=3589).contains(&p4) && r(16, 19) {
        return Some("jcb");
    }
    if p2 == 62 && r(16, 19) {
        return Some("unionpay");
    }
    if (p2 == 81 || p2 == 82 || p2 == 60 || p3 == 508) && len == 16 {
        return Some("rupay");
    }
    if p4 == 9792 && len == 16 {
        return Some("troy");
    }
    if (p2 == 50 || (56..=69).contains(&p2)) && r(12, 19) {
        return Some("maestro");
    }
    None
}

/// A payment card number: a known network's IIN and length, a valid Luhn
/// checksum, and not one digit repeated.
pub fn credit_card(d: &[u8]) -> bool {
    card_brand(d).is_some() && luhn(d) && !d.iter().all(|&b| b == d[0])
}

/// US Social Security Number rules (digits only, 9 of them): the area
/// (first three) is not 000, 666 or 9xx, the group (next two) is not 00,
/// the serial (last four) is not 0000, and not all digits are equal.
pub fn ssn(d: &[u8]) -> bool {
    if d.len() != 9 || !all_digits(d) {
        return false;
    }
    let area = leading_number(d, 3);
    let group = leading_number(&d[3..], 2);
    let serial = leading_number(&d[5..], 4);
    area != 0
        && area != 666
        && area < 900
        && group != 0
        && serial != 0
        && !d.iter().all(|&b| b == d[0])
}

/// [`ssn`] from the three parts' values (area, group, serial).
pub fn ssn_parts(area: u32, group: u32, serial: u32) -> bool {
    let repeated =
        area.is_multiple_of(111) && group == area / 111 * 11 && serial == area / 111 * 1111;
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0 && !repeated
}

/// [`itin`] from the three parts' values (area, group, serial).
pub fn itin_parts(area: u32, group: u32, _serial: u32) -> bool {
    (900..=999).contains(&area) && matches!(group, 50..=65 | 70..=88 | 90..=92 | 94..=99)
}

/// US Individual Taxpayer Identification Number (digits only, 9): area
/// 9xx and group in 50–65, 70–88, 90–92 or 94–99.
pub fn itin(d: &[u8]) -> bool {
    if d.len() != 9 || !all_digits(d) || d[0] != b'9' {
        return false;
    }
    let group = leading_number(&d[3..], 2);
    matches!(group, 50..=65 | 70..=88 | 90..=92 | 94..=99)
}

/// The IBAN length for a country code, from the SWIFT IBAN registry.
pub fn iban_length(country: &[u8]) -> Option<usize> {
    const TABLE: &[(&[u8; 2], u8)] = &[
        (b"AD", 24),
        (b"AE", 23),
        (b"AL", 28),
        (b"AT", 20),
        (b"AZ", 28),
        (b"BA", 20),
        (b"BE", 16),
        (b"BG", 22),
        (b"BH", 22),
        (b"BI", 27),
        (b"BR", 29),
        (b"BY", 28),
        (b"CH", 21),
        (b"CR", 22),
        (b"CY", 28),
        (b"CZ", 24),
        (b"DE", 22),
        (b"DJ", 27),
        (b"DK", 18),
        (b"DO", 28),
        (b"EE", 20),
        (b"EG", 29),
        (b"ES", 24),
        (b"FI", 18),
        (b"FK", 18),
        (b"FO", 18),
        (b"FR", 27),
        (b"GB", 22),
        (b"GE", 22),
        (b"GI", 23),
        (b"GL", 18),
        (b"GR", 27),
        (b"GT", 28),
        (b"HR", 21),
        (b"HU", 28),
        (b"IE", 22),
        (b"IL", 23),
        (b"IQ", 23),
        (b"IS", 26),
        (b"IT", 27),
        (b"JO", 30),
        (b"KW", 30),
        (b"KZ", 20),
        (b"LB", 28),
        (b"LC", 32),
        (b"LI", 21),
        (b"LT", 20),
        (b"LU", 20),
        (b"LV", 21),
        (b"LY", 25),
        (b"MC", 27),
        (b"MD", 24),
        (b"ME", 22),
        (b"MK", 19),
        (b"MN", 20),
        (b"MR", 27),
        (b"MT", 31),
        (b"MU", 30),
        (b"NI", 28),
        (b"NL", 18),
        (b"NO", 15),
        (b"OM", 23),
        (b"PK", 24),
        (b"PL", 28),
        (b"PS", 29),
        (b"PT", 25),
        (b"QA", 29),
        (b"RO", 24),
        (b"RS", 22),
        (b"RU", 33),
        (b"SA", 24),
        (b"SC", 31),
        (b"SD", 18),
        (b"SE", 24),
        (b"SI", 19),
        (b"SK", 24),
        (b"SM", 27),
        (b"SO", 23),
        (b"ST", 25),
        (b"SV", 28),
        (b"TL", 23),
        (b"TN", 24),
        (b"TR", 26),
        (b"UA", 29),
        (b"VA", 22),
        (b"VG", 24),
        (b"XK", 20),
        (b"YE", 30),
    ];
    if country.len() != 2 {
        return None;
    }
    TABLE
        .iter()
        .find(|(c, _)| c[..] == *country)
        .map(|&(_, n)| n as usize)
}

/// An IBAN without spaces (uppercase): registered country, its length, and
/// the ISO 13616 mod-97 checksum equal to 1.
pub fn iban(s: &[u8]) -> bool {
    if s.len() < 15 || !s[..2].iter().all(u8::is_ascii_uppercase) || !all_digits(&s[2..4]) {
        return false;
    }
    if iban_length(&s[..2]) != Some(s.len()) {
        return false;
    }
    if !s[4..]
        .iter()
        .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
    {
        return false;
    }
    let mut rem: u32 = 0;
    let rearranged = s[4..].iter().chain(&s[..4]);
    for &b in rearranged {
        if b.is_ascii_digit() {
            rem = (rem * 10 + dv(b)) % 97;
        } else {
            let v = u32::from(b - b'A') + 10;
            rem = (rem * 100 + v) % 97;
        }
    }
    rem == 1
}

/// ABA routing transit number (9 digits): the 3-7-1 weighted checksum and
/// a Federal Reserve prefix (00–12, 21–32, 61–72, 80).
pub fn aba_routing(d: &[u8]) -> bool {
    if d.len() != 9 || !all_digits(d) {
        return false;
    }
    let prefix = leading_number(d, 2);
    if !matches!(prefix, 0..=12 | 21..=32 | 61..=72 | 80) || d.iter().all(|&b| b == b'0') {
        return false;
    }
    let w = [3, 7, 1];
    let sum: u32 = d.iter().enumerate().map(|(i, &b)| dv(b) * w[i % 3]).sum();
    sum.is_multiple_of(10)
}

/// Verhoeff checksum (used by India's Aadhaar).
pub fn verhoeff(d: &[u8]) -> bool {
    const M: [[u8; 10]; 10] = [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        [1, 2, 3, 4, 0, 6, 7, 8, 9, 5],
        [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
        [3, 4, 0, 1, 2, 8, 9, 5, 6, 7],
        [4, 0, 1, 2, 3, 9, 5, 6, 7, 8],
        [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
        [6, 5, 9, 8, 7, 1, 0, 4, 3, 2],
        [7, 6, 5, 9, 8, 2, 1, 0, 4, 3],
        [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
        [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
    ];
    const P: [[u8; 10]; 8] = [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        [1, 5, 7, 6, 2, 8, 3, 0, 9, 4],
        [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
        [8, 9, 1, 6, 0, 4, 3, 5, 2, 7],
        [9, 4, 5, 3, 1, 2, 8, 7, 6, 0],
        [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
        [2, 7, 9, 3, 8, 0, 6, 4, 1, 5],
        [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
    ];
    if !all_digits(d) {
        return false;
    }
    let mut c = 0u8;
    for (i, &b) in d.iter().rev().enumerate() {
        c = M[c as usize][P[i % 8][dv(b) as usize] as usize];
    }
    c == 0
}

/// India Aadhaar number (12 digits): first digit 2–9, Verhoeff checksum.
pub fn aadhaar(d: &[u8]) -> bool {
    d.len() == 12 && all_digits(d) && d[0] >= b'2' && verhoeff(d)
}

/// UK NHS number (10 digits): mod-11 check digit.
pub fn nhs(d: &[u8]) -> bool {
    if d.len() != 10 || !all_digits(d) || d.iter().all(|&b| b == d[0]) {
        return false;
    }
    let sum: u32 = d[..9]
        .iter()
        .enumerate()
        .map(|(i, &b)| dv(b) * (10 - i as u32))
        .sum();
    let check = 11 - sum % 11;
    let check = if check == 11 { 0 } else { check };
    check != 10 && check == dv(d[9])
}

/// UK National Insurance number, compact and uppercase (`AB123456C`):
/// valid prefix letters, six digits, suffix A–D.
pub fn uk_nino(s: &[u8]) -> bool {
    if s.len() != 9 {
        return false;
    }
    let (a, b) = (s[0], s[1]);
    let ok_first = a.is_ascii_uppercase() && !b"DFIQUV".contains(&a);
    let ok_second = b.is_ascii_uppercase() && !b"DFIOQUV".contains(&b);
    let bad_prefix = [b"BG", b"GB", b"KN", b"NK", b"NT", b"TN", b"ZZ"]
        .iter()
        .any(|p| p[..] == s[..2]);
    ok_first && ok_second && !bad_prefix && all_digits(&s[2..8]) && (b'A'..=b'D').contains(&s[8])
}

/// Spanish DNI/NIF (`12345678Z`): eight digits and the mod-23 letter.
pub fn es_nif(s: &[u8]) -> bool {
    const LETTERS: &[u8; 23] = b"TRWAGMYFPDXBNJZSQVHLCKE";
    s.len() == 9 && all_digits(&s[..8]) && LETTERS[(leading_number(s, 8) % 23) as usize] == s[8]
}

/// Spanish NIE (`X1234567L`): X/Y/Z, seven digits and the mod-23 letter.
pub fn es_nie(s: &[u8]) -> bool {
    if s.len() != 9 {
        return false;
    }
    let lead = match s[0] {
        b'X' => b'0',
        b'Y' => b'1',
        b'Z' => b'2',
        _ => return false,
    };
    let mut nif = [0u8; 9];
    nif[0] = lead;
    nif[1..].copy_from_slice(&s[1..]);
    es_nif(&nif)
}

/// Italian codice fiscale (16 characters, uppercase) including omocodia
/// substitutions, with its check character.
pub fn it_fiscal_code(s: &[u8]) -> bool {
    if s.len() != 16 {
        return false;
    }
    // Positions that hold digits (or their omocodia letters).
    const DIGIT_POS: [usize; 7] = [6, 7, 9, 10, 12, 13, 14];
    const OMOCODIA: &[u8] = b"LMNPQRSTUV";
    for (i, &c) in s.iter().enumerate() {
        let ok = if DIGIT_POS.contains(&i) {
            c.is_ascii_digit() || OMOCODIA.contains(&c)
        } else {
            c.is_ascii_uppercase()
        };
        if !ok {
            return false;
        }
    }
    if !b"ABCDEHLMPRST".contains(&s[8]) {
        return false;
    }
    const ODD: [u32; 26] = [
        1, 0, 5, 7, 9, 13, 15, 17, 19, 21, 2, 4, 18, 20, 11, 3, 6, 8, 12, 14, 16, 10, 22, 25, 24,
        23,
    ];
    let mut sum = 0;
    for (i, &c) in s[..15].iter().enumerate() {
        let v = if c.is_ascii_digit() {
            dv(c)
        } else {
            u32::from(c - b'A')
        };
        // Positions are 1-based in the specification: odd ones use ODD.
        sum += if i % 2 == 0 { ODD[v as usize] } else { v };
    }
    u32::from(s[15] - b'A') == sum % 26
}

/// Singapore NRIC/FIN (`S1234567D`): prefix S/T/F/G/M and the check letter.
pub fn sg_nric(s: &[u8]) -> bool {
    if s.len() != 9 || !all_digits(&s[1..8]) || !s[8].is_ascii_uppercase() {
        return false;
    }
    const W: [u32; 7] = [2, 7, 6, 5, 4, 3, 2];
    let mut sum: u32 = s[1..8].iter().zip(W).map(|(&b, w)| dv(b) * w).sum();
    let table: &[u8] = match s[0] {
        b'S' => b"JZIHGFEDCBA",
        b'T' => {
            sum += 4;
            b"JZIHGFEDCBA"
        }
        b'F' => b"XWUTRQPNMLK",
        b'G' => {
            sum += 4;
            b"XWUTRQPNMLK"
        }
        b'M' => {
            sum += 3;
            b"XWUTRQPNJLK"
        }
        _ => return false,
    };
    let idx = if s[0] == b'M' {
        10 - (sum % 11)
    } else {
        sum % 11
    };
    table.get(idx as usize) == Some(&s[8])
}

/// Australian Tax File Number (9 digits): weighted mod-11 checksum.
pub fn au_tfn(d: &[u8]) -> bool {
    const W: [u32; 9] = [1, 4, 3, 7, 5, 8, 6, 9, 10];
    d.len() == 9 && all_digits(d) && d.iter().zip(W).map(|(&b, w)| dv(b) * w).sum::<u32>() % 11 == 0
}

/// Australian Business Number (11 digits): weighted mod-89 checksum.
pub fn au_abn(d: &[u8]) -> bool {
    const W: [u32; 11] = [10, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19];
    if d.len() != 11 || !all_digits(d) || d[0] == b'0' {
        return false;
    }
    let sum: u32 = d
        .iter()
        .zip(W)
        .enumerate()
        .map(|(i, (&b, w))| (dv(b) - u32::from(i == 0)) * w)
        .sum();
    sum.is_multiple_of(89)
}

/// Polish PESEL (11 digits): weighted checksum and a plausible month.
pub fn pesel(d: &[u8]) -> bool {
    const W: [u32; 10] = [1, 3, 7, 9, 1, 3, 7, 9, 1, 3];
    if d.len() != 11 || !all_digits(d) {
        return false;
    }
    let month = leading_number(&d[2..], 2) % 20;
    if !(1..=12).contains(&month) {
        return false;
    }
    let sum: u32 = d[..10].iter().zip(W).map(|(&b, w)| dv(b) * w).sum();
    (10 - sum % 10) % 10 == dv(d[10])
}

/// India PAN (`ABCPE1234F`): five letters (the fourth a holder type),
/// four digits, one letter.
pub fn in_pan(s: &[u8]) -> bool {
    s.len() == 10
        && s[..5].iter().all(u8::is_ascii_uppercase)
        && b"ABCFGHLJPT".contains(&s[3])
        && all_digits(&s[5..9])
        && s[9].is_ascii_uppercase()
}

/// A dotted-quad IPv4 address with each octet 0–255 and no leading
/// zeros (`192.0.2.1`; not `01.2.3.4`, not `256.1.1.1`).
pub fn ipv4(s: &str) -> bool {
    let mut parts = 0;
    for part in s.split('.') {
        parts += 1;
        let b = part.as_bytes();
        if b.is_empty() || b.len() > 3 || !all_digits(b) || (b.len() > 1 && b[0] == b'0') {
            return false;
        }
        if leading_number(b, 3) > 255 {
            return false;
        }
    }
    parts == 4
}

/// An IPv6 address in any RFC 4291/5952 text form, including `::`
/// compression and an embedded IPv4 tail.
pub fn ipv6(s: &str) -> bool {
    s.parse::<std::net::Ipv6Addr>().is_ok()
}

/// Shannon entropy in bits per byte of `s` (0 for the empty string).
#[inline(never)]
pub fn shannon_entropy(s: &[u8]) -> f32 {
    if s.is_empty() {
        return 0.0;
    }
    // H = log2(n) - (1/n) * sum(c * log2(c)) over the byte counts c.
    let mut counts = [0u32; 256];
    let mut distinct = [0u8; 256];
    let mut d = 0;
    for &b in s {
        if counts[b as usize] == 0 {
            distinct[d] = b;
            d += 1;
        }
        counts[b as usize] += 1;
    }
    let n = s.len() as u32;
    let sum: f32 = distinct[..d]
        .iter()
        .map(|&b| {
            let c = counts[b as usize];
            c as f32 * log2_int(c)
        })
        .sum();
    (log2_int(n) - sum / n as f32).max(0.0)
}

/// log2 of a positive integer: a table for small values (secrets are
/// short), `f32::log2` beyond.
fn log2_int(x: u32) -> f32 {
    static TABLE: std::sync::OnceLock<[f32; 1024]> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| {
        let mut t = [0f32; 1024];
        for (i, v) in t.iter_mut().enumerate().skip(1) {
            *v = (i as f32).log2();
        }
        t
    });
    match t.get(x as usize) {
        Some(&v) => v,
        None => (x as f32).log2(),
    }
}

/// Heuristic for "looks like a generated secret": at least one letter and
/// one digit, not one character repeated, and enough entropy for its
/// length (gitleaks uses a similar entropy gate for its generic rules).
#[inline(never)]
pub fn looks_random(s: &[u8]) -> bool {
    let has_digit = s.iter().any(u8::is_ascii_digit);
    let has_alpha = s.iter().any(u8::is_ascii_alphabetic);
    if !has_digit || !has_alpha || s.len() < 8 {
        return false;
    }
    let threshold = if s.len() >= 24 { 3.3 } else { 2.8 };
    shannon_entropy(s) >= threshold
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_known() {
        assert!(luhn(b"4111111111111111"));
        assert!(luhn(b"79927398713"));
        assert!(!luhn(b"4111111111111112"));
        assert!(!luhn(b""));
        assert!(!luhn(b"4111a"));
    }

    #[test]
    fn entropy() {
        assert_eq!(shannon_entropy(b"aaaa"), 0.0);
        assert!((shannon_entropy(b"abcd") - 2.0).abs() < 1e-6);
        assert!(looks_random(b"Zk3pQ9xL2mN8vB4c"));
        assert!(!looks_random(b"abcdefghijkl"));
        assert!(!looks_random(b"1234567890"));
    }
}
