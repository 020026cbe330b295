//! Detectors anchored on a run of digit groups: SSN/ITIN, phone numbers,
//! payment cards, IPv4, context-anchored national and bank numbers,
//! Telegram bot tokens, Spanish NIF, and the start of street addresses.

use crate::finding::types;
use crate::scanner::{Cx, is_alnum, skip_alnum};
use crate::validate;
use crate::words;

const MAXG: usize = 8;
const NONE: usize = usize::MAX;

/// Digit groups separated by single separators: `555-123-4567`,
/// `+1 (555) 123 4567`, `4111 1111 1111 1111`, `192.0.2.1`.
struct Groups {
    s: [u32; MAXG],
    e: [u32; MAXG],
    /// Separator before group k (k ≥ 1): `-`, `.`, ` `, `(` for ` (`,
    /// `)` for `)` or `) `.
    sep: [u8; MAXG],
    n: usize,
    /// Index of the group opened by `(`, if any.
    paren: usize,
    /// A `+` directly before the first group.
    plus: bool,
    /// Digits in all groups.
    total: usize,
}

impl Groups {
    fn parse(b: &[u8], i: usize) -> Groups {
        let mut g = Groups {
            s: [0; MAXG],
            e: [0; MAXG],
            sep: [0; MAXG],
            n: 0,
            paren: if i > 0 && b[i - 1] == b'(' { 0 } else { NONE },
            plus: i > 0 && b[i - 1] == b'+' && (i < 2 || !is_alnum(b[i - 2])),
            total: 0,
        };
        if g.paren == 0 && i >= 2 && b[i - 2] == b'+' {
            g.plus = true;
        }
        let len = b.len();
        let mut k = i;
        let mut sep = 0u8;
        loop {
            let s = k;
            while k < len && b[k].is_ascii_digit() {
                k += 1;
            }
            g.s[g.n] = s as u32;
            g.e[g.n] = k as u32;
            g.total += k - s;
            g.sep[g.n] = sep;
            g.n += 1;
            if g.n == MAXG || k + 1 >= len {
                break;
            }
            let d1 = b[k + 1].is_ascii_digit();
            let d2 = k + 2 < len && b[k + 2].is_ascii_digit();
            let (s2, adv, opens) = match (b[k], b[k + 1]) {
                (b'-' | b'.' | b' ', _) if d1 => (b[k], 1, false),
                (b' ', b'(') if d2 => (b'(', 2, true),
                (b')', b' ') if g.paren == g.n - 1 && d2 => (b')', 2, false),
                (b')', _) if g.paren == g.n - 1 && d1 => (b')', 1, false),
                _ => break,
            };
            if opens {
                g.paren = g.n;
            }
            sep = s2;
            k += adv;
        }
        g
    }

    fn end(&self) -> usize {
        self.e[self.n - 1] as usize
    }

    #[inline]
    fn s(&self, k: usize) -> usize {
        self.s[k] as usize
    }

    #[inline]
    fn e(&self, k: usize) -> usize {
        self.e[k] as usize
    }

    /// The numeric value of group k (at most 9 digits are read).
    #[inline]
    fn value(&self, b: &[u8], k: usize) -> u32 {
        b[self.s(k)..self.e(k)]
            .iter()
            .take(9)
            .fold(0, |v, &c| v * 10 + u32::from(c - b'0'))
    }

    #[inline]
    fn glen(&self, k: usize) -> usize {
        (self.e[k] - self.s[k]) as usize
    }

    /// Concatenated digits of groups a..=z (at most 32).
    fn digits(&self, b: &[u8], a: usize, z: usize, buf: &mut [u8; 32]) -> usize {
        let mut n = 0;
        for k in a..=z {
            let g = &b[self.s(k)..self.e(k)];
            let m = g.len().min(buf.len() - n);
            buf[n..n + m].copy_from_slice(&g[..m]);
            n += m;
        }
        n
    }

    /// Group z ends the run or is followed by a space separator.
    fn closed_after(&self, z: usize) -> bool {
        z + 1 == self.n || self.sep[z + 1] == b' ' || self.sep[z + 1] == b'('
    }
}

const SSN_CTX: &[&str] = &["ssn", "social security", "ss#", "social sec", "ssa"];
const ITIN_CTX: &[&str] = &["itin", "taxpayer", "tax id", "tin"];
const PHONE_CTX: &[&str] = &[
    "phone",
    "tel",
    "mobile",
    "cell",
    "fax",
    "call",
    "sms",
    "whatsapp",
    "telefon",
    "contact number",
];
const BANK_CTX: &[&str] = &[
    "account number",
    "account no",
    "account #",
    "acct",
    "a/c",
    "bank account",
    "checking",
    "savings account",
];
const ROUTING_CTX: &[&str] = &["routing", "aba", "rtn", "transit number"];
const PASSPORT_CTX: &[&str] = &["passport"];
const NHS_CTX: &[&str] = &["nhs"];
const AADHAAR_CTX: &[&str] = &["aadhaar", "aadhar", "uidai"];
const TFN_CTX: &[&str] = &["tfn", "tax file"];
const ABN_CTX: &[&str] = &["abn", "business number"];
const PESEL_CTX: &[&str] = &["pesel"];

/// Words before a dotted quad that make it a version, not an address.
const VERSION_WORDS: &[&[u8]] = &[
    b"v",
    b"ver",
    b"version",
    b"versions",
    b"release",
    b"rel",
    b"build",
    b"firmware",
    b"fw",
    b"tag",
    b"revision",
    b"rev",
    b"patch",
    b"sdk",
    b"bump",
    b"bumped",
    b"upgrade",
    b"upgraded",
    b"update",
    b"updated",
    b"install",
    b"installed",
    b"release-",
];

/// Scans the digit run starting at `i` (a token start) and returns where
/// scanning resumes.
pub(crate) fn run(cx: &mut Cx<'_>, i: usize) -> usize {
    let b = cx.b;
    let g = Groups::parse(b, i);
    let end = g.end();
    let before = cx.out.len();

    // Digits glued to letters: `12345678Z` (NIF), `221B Baker Street`.
    if end < b.len() && b[end].is_ascii_alphabetic() {
        if g.n == 1 {
            let tok_end = skip_alnum(b, end);
            let l = g.glen(0);
            if l == 8
                && tok_end == end + 1
                && b[end].is_ascii_uppercase()
                && validate::es_nif(&b[i..tok_end])
            {
                cx.push(types::SSN, i, tok_end, 0.8, "es_nif");
            } else if l <= 6 && tok_end == end + 1 && b[end].is_ascii_uppercase() {
                words::address(cx, i, tok_end);
            }
            return tok_end;
        }
        return skip_alnum(b, end);
    }
    // Dotted only: an IPv4 address when exactly four groups, otherwise a
    // version, a decimal or a date.
    if g.n >= 2 && (1..g.n).all(|k| g.sep[k] == b'.') {
        if g.n == 4 {
            ipv4(cx, &g, 0);
        }
        // `555.123.4567` is still a phone number.
        if !(g.n == 3 && g.glen(0) == 3 && g.glen(1) == 3 && g.glen(2) == 4) {
            return end;
        }
    }

    let mut buf = [0u8; 32];

    if g.n == 1 {
        single(cx, &g, i, end);
        return telegram(cx, &g, i).unwrap_or(end);
    }

    let mut phone_found = false;
    for a in 0..g.n {
        if a > 0 && g.sep[a] != b' ' && g.sep[a] != b'(' {
            continue;
        }
        // A dotted quad inside a longer run (`hosts 192.0.2.1 192.0.2.2`).
        if a + 3 < g.n && (a + 1..=a + 3).all(|k| g.sep[k] == b'.') && g.closed_after(a + 3) {
            ipv4(cx, &g, a);
            continue;
        }
        // SSN / ITIN: 3-2-4 with one separator.
        if a + 2 < g.n
            && g.glen(a) == 3
            && g.glen(a + 1) == 2
            && g.glen(a + 2) == 4
            && g.sep[a + 1] == g.sep[a + 2]
            && matches!(g.sep[a + 1], b'-' | b' ' | b'.')
            && g.closed_after(a + 2)
        {
            let (area, group, serial) = (g.value(b, a), g.value(b, a + 1), g.value(b, a + 2));
            let conf = if g.sep[a + 1] == b'-' { 0.85 } else { 0.7 };
            if validate::ssn_parts(area, group, serial) {
                cx.push(types::SSN, g.s(a), g.e(a + 2), conf, "us_ssn");
            } else if validate::itin_parts(area, group, serial) {
                cx.push(types::SSN, g.s(a), g.e(a + 2), conf, "us_itin");
            }
        }
        // NANP phone: [1] 3-3-4, area code possibly in parentheses.
        if a + 2 < g.n && g.glen(a) == 3 && g.glen(a + 1) == 3 && g.glen(a + 2) == 4 {
            let s1 = g.sep[a + 1];
            let s2 = g.sep[a + 2];
            let ok1 = matches!(s1, b'-' | b'.' | b' ') || (s1 == b')' && g.paren == a);
            let ok2 = matches!(s2, b'-' | b'.' | b' ');
            if ok1 && ok2 && (s1 == s2 || s1 == b')' || s1 == b' ') && g.closed_after(a + 2) {
                let mut start = if g.paren == a { g.s(a) - 1 } else { g.s(a) };
                let mut conf = 0.75;
                if a >= 1
                    && g.glen(a - 1) == 1
                    && b[g.s(a - 1)] == b'1'
                    && (a == 1 || g.sep[a - 1] == b' ')
                {
                    start = g.s(a - 1);
                    if a == 1 && g.plus {
                        start -= 1;
                    }
                    conf = 0.85;
                } else if a == 0 && g.plus {
                    start -= 1;
                }
                if g.paren == a {
                    conf = 0.85;
                }
                if b[g.s(a)] < b'2' {
                    conf -= 0.25;
                }
                cx.push(types::PHONE, start, g.e(a + 2), conf, "phone_nanp");
                phone_found = true;
            }
        }
        // Payment cards: 13–19 digits in one separator style.
        if g.total >= 13 {
            card_window(cx, &g, a, &mut buf);
        }
        // Aadhaar 4-4-4 and NHS 3-3-4 with context.
        if a + 2 < g.n && g.closed_after(a + 2) && g.sep[a + 1] == g.sep[a + 2] {
            let lens = (g.glen(a), g.glen(a + 1), g.glen(a + 2));
            let (s, e) = (g.s(a), g.e(a + 2));
            if lens == (4, 4, 4) {
                let n = g.digits(b, a, a + 2, &mut buf);
                if validate::aadhaar(&buf[..n]) && cx.context(s, e, AADHAAR_CTX) {
                    cx.push(types::SSN, s, e, 0.8, "in_aadhaar");
                }
            } else if lens == (3, 3, 4) && g.sep[a + 1] == b' ' {
                let n = g.digits(b, a, a + 2, &mut buf);
                if validate::nhs(&buf[..n]) && cx.context(s, e, NHS_CTX) {
                    cx.push(types::SSN, s, e, 0.85, "uk_nhs");
                }
            }
        }
    }

    // International numbers written with a leading `+`.
    if g.plus && !phone_found {
        let total: usize = (0..g.n).map(|k| g.glen(k)).sum();
        if (8..=15).contains(&total) && g.glen(0) <= 4 {
            let start = if g.paren == 0 { g.s(0) - 2 } else { g.s(0) - 1 };
            cx.push(types::PHONE, start, end, 0.75, "phone_intl");
            phone_found = true;
        }
    }

    // Whole-run checks that need context (separators are spaces/dashes).
    // One separator style only: mixed delimiters (`123-45 6789`) are not
    // an identifier.
    if cx.out.len() == before
        && matches!(g.sep[1], b' ' | b'-')
        && (2..g.n).all(|k| g.sep[k] == g.sep[1])
    {
        let n = g.digits(b, 0, g.n - 1, &mut buf);
        let d = &buf[..n];
        contextual(cx, d, i, end);
        if cx.out.len() == before && !phone_found {
            phone_in_context(cx, &g, i, end);
        }
    }
    end
}

/// Checks for a run that is one group of digits.
#[inline(never)]
fn single(cx: &mut Cx<'_>, g: &Groups, i: usize, end: usize) {
    let b = cx.b;
    let d = &b[i..end];
    let l = d.len();
    let before = cx.out.len();
    if (13..=19).contains(&l) && validate::credit_card(d) {
        cx.push(types::CREDIT_CARD, i, end, 0.9, "payment_card");
        return;
    }
    if g.plus && (8..=15).contains(&l) {
        cx.push(types::PHONE, i - 1, end, 0.7, "phone_intl");
        return;
    }
    if l <= 6 && end + 1 < b.len() && b[end] == b' ' {
        let c = b[end + 1];
        if c.is_ascii_uppercase() || c.is_ascii_digit() {
            words::address(cx, i, end);
        }
        return;
    }
    contextual(cx, d, i, end);
    if cx.out.len() == before && (7..=15).contains(&l) && cx.context(i, end, PHONE_CTX) {
        cx.push(types::PHONE, i, end, 0.6, "phone_context");
    }
}

/// Identifiers that are only recognised with a context word nearby (in the
/// text or the field name), because their digits alone are too common.
#[inline(never)]
fn contextual(cx: &mut Cx<'_>, d: &[u8], s: usize, e: usize) {
    let l = d.len();
    if l == 9 {
        if validate::ssn(d) && cx.context(s, e, SSN_CTX) {
            cx.push(types::SSN, s, e, 0.6, "us_ssn_context");
            return;
        }
        if validate::itin(d) && cx.context(s, e, ITIN_CTX) {
            cx.push(types::SSN, s, e, 0.6, "us_itin_context");
            return;
        }
        if validate::aba_routing(d) && cx.context(s, e, ROUTING_CTX) {
            cx.push(types::CREDIT_CARD, s, e, 0.7, "aba_routing");
            return;
        }
        if validate::au_tfn(d) && cx.context(s, e, TFN_CTX) {
            cx.push(types::SSN, s, e, 0.7, "au_tfn");
            return;
        }
        if cx.context(s, e, PASSPORT_CTX) {
            cx.push(types::SSN, s, e, 0.6, "us_passport");
            return;
        }
    }
    if l == 10 && validate::nhs(d) && cx.context(s, e, NHS_CTX) {
        cx.push(types::SSN, s, e, 0.85, "uk_nhs");
        return;
    }
    if l == 11 {
        if validate::au_abn(d) && cx.context(s, e, ABN_CTX) {
            cx.push(types::SSN, s, e, 0.7, "au_abn");
            return;
        }
        if validate::pesel(d) && cx.context(s, e, PESEL_CTX) {
            cx.push(types::SSN, s, e, 0.8, "pl_pesel");
            return;
        }
    }
    if l == 12 && validate::aadhaar(d) && cx.context(s, e, AADHAAR_CTX) {
        cx.push(types::SSN, s, e, 0.8, "in_aadhaar");
        return;
    }
    if (8..=17).contains(&l) && cx.context(s, e, BANK_CTX) {
        cx.push(types::CREDIT_CARD, s, e, 0.6, "bank_account");
    }
}

#[inline(never)]
fn phone_in_context(cx: &mut Cx<'_>, g: &Groups, s: usize, e: usize) {
    let total: usize = (0..g.n).map(|k| g.glen(k)).sum();
    let groups_ok = (0..g.n).all(|k| g.glen(k) >= 2 || (k == 0 && g.glen(k) == 1));
    if (7..=15).contains(&total) && groups_ok && cx.context(s, e, PHONE_CTX) {
        cx.push(types::PHONE, s, e, 0.6, "phone_context");
    }
}

/// The longest valid card number starting at group `a`.
#[inline(never)]
fn card_window(cx: &mut Cx<'_>, g: &Groups, a: usize, buf: &mut [u8; 32]) {
    let b = cx.b;
    if (a..g.n).map(|k| g.glen(k)).sum::<usize>() < 13 {
        return;
    }
    let mut best = None;
    let mut total = 0;
    for z in a..g.n {
        total += g.glen(z);
        if total > 19 {
            break;
        }
        if z > a && (!matches!(g.sep[z], b' ' | b'-') || g.sep[z] != g.sep[a + 1]) {
            break;
        }
        if total < 13 || !g.closed_after(z) {
            continue;
        }
        let count = z - a + 1;
        let grouping_ok = count == 1
            || ((a..z).all(|k| g.glen(k) == 4) && g.glen(z) <= 4)
            || (count == 3 && g.glen(a) == 4 && g.glen(a + 1) == 6 && matches!(g.glen(z), 4 | 5));
        if !grouping_ok {
            continue;
        }
        let n = g.digits(b, a, z, buf);
        if validate::credit_card(&buf[..n]) {
            best = Some(z);
        }
    }
    if let Some(z) = best {
        let conf = if z > a { 0.95 } else { 0.9 };
        cx.push(types::CREDIT_CARD, g.s(a), g.e(z), conf, "payment_card");
    }
}

/// The dotted quad made of groups a..=a+3.
#[inline(never)]
fn ipv4(cx: &mut Cx<'_>, g: &Groups, a: usize) {
    let b = cx.b;
    let (s, e) = (g.s(a), g.e(a + 3));
    let i = s;
    if !validate::ipv4(&cx.v[s..e]) {
        return;
    }
    // `1.2.3.4-beta`, `1.2.3.4+build` are versions.
    if e + 1 < b.len() && matches!(b[e], b'-' | b'+') && is_alnum(b[e + 1]) {
        return;
    }
    if i > 0
        && matches!(
            b[i - 1],
            b'.' | b'-' | b'@' | b'/' | b'=' | b'^' | b'~' | b'>' | b'<'
        )
    {
        // `pkg@1.2.3.4`, `==1.2.3.4`, `^1.2.3.4`, `-1.2.3.4`: versions or
        // part of a longer token.
        return;
    }
    if preceded_by_version_word(b, i) {
        return;
    }
    let all_single = (a..a + 4).all(|k| g.glen(k) == 1);
    let conf = if all_single { 0.5 } else { 0.85 };
    cx.push(types::IP_ADDRESS, s, e, conf, "ipv4");
}

fn preceded_by_version_word(b: &[u8], i: usize) -> bool {
    let mut k = i;
    // Up to three words back, skipping linking words: "version is",
    // "upgraded to", "release now at".
    for _ in 0..3 {
        let mut skipped = 0;
        while k > 0
            && matches!(b[k - 1], b' ' | b':' | b'=' | b'"' | b'\'' | b'(' | b'#')
            && skipped < 4
        {
            k -= 1;
            skipped += 1;
        }
        let mut w = k;
        while w > 0 && b[w - 1].is_ascii_alphabetic() && k - w < 12 {
            w -= 1;
        }
        if w == k {
            return false;
        }
        let word = &b[w..k];
        if VERSION_WORDS.iter().any(|v| word.eq_ignore_ascii_case(v)) {
            return true;
        }
        const LINKING: &[&[u8]] = &[b"to", b"from", b"is", b"was", b"now", b"at", b"of", b"on"];
        if !LINKING.iter().any(|v| word.eq_ignore_ascii_case(v)) {
            return false;
        }
        k = w;
    }
    false
}

/// Telegram bot token: `123456789:AA…` (8–10 digits, colon, 35 chars).
#[inline(never)]
fn telegram(cx: &mut Cx<'_>, g: &Groups, i: usize) -> Option<usize> {
    let b = cx.b;
    let e = g.e(0);
    let l = e - i;
    if !(8..=10).contains(&l) || b.get(e) != Some(&b':') {
        return None;
    }
    let body = e + 1;
    let mut k = body;
    while k < b.len() && (is_alnum(b[k]) || b[k] == b'_' || b[k] == b'-') {
        k += 1;
    }
    if k - body == 35 && b[body] == b'A' {
        cx.push(types::API_KEY, i, k, 0.85, "telegram_bot_token");
        return Some(k);
    }
    None
}
