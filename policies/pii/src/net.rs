//! Network-shaped detectors: e-mail addresses (anchored on `@`), URLs
//! with credentials and database URLs (anchored on `://`), IPv6
//! addresses (anchored on `:`).

use crate::finding::types;
use crate::scanner::{Cx, is_alnum};
use crate::secrets;
use crate::validate;

const LOCAL: u8 = 1;
const DOMAIN: u8 = 2;

/// Characters of an e-mail local part and of a domain name.
static MAIL: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        if b.is_ascii_alphanumeric() || b == b'.' || b == b'-' {
            t[c] = LOCAL | DOMAIN;
        } else if b == b'_' || b == b'%' || b == b'+' {
            t[c] = LOCAL;
        }
        c += 1;
    }
    t
};

#[inline]
fn local_char(c: u8) -> bool {
    MAIL[c as usize] & LOCAL != 0
}

#[inline]
fn domain_char(c: u8) -> bool {
    MAIL[c as usize] & DOMAIN != 0
}

/// An e-mail address around the `@` at `i`.
pub(crate) fn email(cx: &mut Cx<'_>, i: usize) -> usize {
    let b = cx.b;
    let mut s = i;
    while s > 0 && local_char(b[s - 1]) && i - s < 64 {
        s -= 1;
    }
    if s > 0 && local_char(b[s - 1]) {
        return i + 1; // local part longer than 64
    }
    // Leading dots/dashes are punctuation.
    while s < i && matches!(b[s], b'.' | b'-' | b'+') {
        s += 1;
    }
    if s == i || b[i - 1] == b'.' {
        return i + 1;
    }
    if b[s..i].windows(2).any(|w| w == b"..") {
        return i + 1;
    }
    let mut e = i + 1;
    while e < b.len() && domain_char(b[e]) && e - i < 254 {
        e += 1;
    }
    while e > i + 1 && matches!(b[e - 1], b'.' | b'-') {
        e -= 1;
    }
    if e < b.len() && (b[e] == b'_' || b[e] == b'@') {
        return i + 1;
    }
    let domain = &b[i + 1..e];
    if !valid_domain(domain) {
        return i + 1;
    }
    // `icon@2x.png`: a retina image name, not an address.
    let first_label = &domain[..domain
        .iter()
        .position(|&c| c == b'.')
        .unwrap_or(domain.len())];
    if first_label.len() >= 2
        && first_label.ends_with(b"x")
        && validate::all_digits(&first_label[..first_label.len() - 1])
    {
        return e;
    }
    cx.push(types::EMAIL, s, e, 0.9, "email");
    e
}

/// A DNS name with at least two labels and an alphabetic TLD.
fn valid_domain(d: &[u8]) -> bool {
    let mut labels = 0;
    let mut start = 0;
    for i in 0..=d.len() {
        if i == d.len() || d[i] == b'.' {
            let l = &d[start..i];
            if l.is_empty() || l.len() > 63 || l[0] == b'-' || l[l.len() - 1] == b'-' {
                return false;
            }
            labels += 1;
            if i == d.len() {
                return labels >= 2
                    && l.len() >= 2
                    && (l.iter().all(u8::is_ascii_alphabetic) || l.starts_with(b"xn--"));
            }
            start = i + 1;
        }
    }
    false
}

/// `:` — a URL scheme separator or part of an IPv6 address.
pub(crate) fn colon(cx: &mut Cx<'_>, i: usize) -> usize {
    if cx.b[i..].starts_with(b"://") {
        return url(cx, i);
    }
    ipv6(cx, i)
}

const DB_SCHEMES: &[&[u8]] = &[
    b"postgres",
    b"postgresql",
    b"pgsql",
    b"mysql",
    b"mysqlx",
    b"mariadb",
    b"mongodb",
    b"redis",
    b"rediss",
    b"valkey",
    b"amqp",
    b"amqps",
    b"mssql",
    b"sqlserver",
    b"oracle",
    b"cockroachdb",
    b"cockroach",
    b"clickhouse",
    b"cassandra",
    b"couchdb",
    b"couchbase",
    b"couchbases",
    b"neo4j",
    b"bolt",
    b"memcached",
    b"influxdb",
    b"db2",
    b"snowflake",
    b"libsql",
    b"surrealdb",
    b"nats",
    b"kafka",
    b"elasticsearch",
    b"opensearch",
];

fn url_char(c: u8) -> bool {
    !(c.is_ascii_whitespace()
        || matches!(
            c,
            b'"' | b'\'' | b'`' | b'<' | b'>' | b'\\' | b'{' | b'}' | b'|' | b'^'
        ))
}

/// The URL whose `://` is at `i`.
fn url(cx: &mut Cx<'_>, i: usize) -> usize {
    let b = cx.b;
    let mut s = i;
    while s > 0 && (is_alnum(b[s - 1]) || matches!(b[s - 1], b'+' | b'-' | b'.')) && i - s < 32 {
        s -= 1;
    }
    if s == i {
        return i + 3;
    }
    let scheme = &b[s..i];
    let base = scheme.split(|&c| c == b'+').next().unwrap_or(scheme);
    let is_db = DB_SCHEMES.iter().any(|d| base.eq_ignore_ascii_case(d));
    // `jdbc:postgresql://`.
    if s >= 5 && b[s - 5..s].eq_ignore_ascii_case(b"jdbc:") {
        s -= 5;
    }
    let a = i + 3;
    let mut e = a;
    let lim = (a + 2048).min(b.len());
    while e < lim && url_char(b[e]) {
        e += 1;
    }
    while e > a && matches!(b[e - 1], b'.' | b',' | b')' | b';' | b':' | b'!' | b'?') {
        e -= 1;
    }
    let auth_end = b[a..e]
        .iter()
        .position(|&c| matches!(c, b'/' | b'?' | b'#'))
        .map_or(e, |p| a + p);
    let authority = &b[a..auth_end];
    let creds = authority.iter().rposition(|&c| c == b'@').and_then(|at| {
        let ui = &authority[..at];
        let colon = ui.iter().position(|&c| c == b':')?;
        let pw = &ui[colon + 1..];
        (!pw.is_empty() && !secrets::placeholder(pw)).then_some((a + colon + 1, a + at))
    });
    if is_db {
        if creds.is_some() {
            cx.push(types::DATABASE_URL, s, e, 0.95, "database_url");
            return e;
        }
        if query_password(&b[a..e]) {
            cx.push(types::DATABASE_URL, s, e, 0.9, "database_url");
            return e;
        }
        return i + 3;
    }
    if let Some((ps, pe)) = creds {
        cx.push(types::PASSWORD, ps, pe, 0.8, "url_credentials");
        return e;
    }
    i + 3
}

/// `password=…` or `pwd=…` with a value in a URL's query or JDBC options.
fn query_password(u: &[u8]) -> bool {
    for key in [&b"password="[..], b"pwd=", b"passwd="] {
        let mut from = 0;
        while let Some(p) = find_ci(&u[from..], key) {
            let at = from + p;
            let prev_ok = at == 0 || matches!(u[at - 1], b'?' | b'&' | b';' | b':');
            let v = at + key.len();
            if prev_ok && v < u.len() && !matches!(u[v], b'&' | b';') {
                return true;
            }
            from = at + 1;
        }
    }
    false
}

fn find_ci(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if hay.len() < needle.len() {
        return None;
    }
    (0..=hay.len() - needle.len()).find(|&i| hay[i..i + needle.len()].eq_ignore_ascii_case(needle))
}

fn v6_char(c: u8) -> bool {
    c.is_ascii_hexdigit() || c == b':'
}

/// An IPv6 address containing the `:` at `i`.
fn ipv6(cx: &mut Cx<'_>, i: usize) -> usize {
    let b = cx.b;
    let mut s = i;
    while s > 0 && v6_char(b[s - 1]) && i - s < 40 {
        s -= 1;
    }
    if s > 0 && (is_alnum(b[s - 1]) || matches!(b[s - 1], b'_' | b'.' | b'-')) {
        return i + 1;
    }
    let mut e = i + 1;
    while e < b.len() && (v6_char(b[e]) || b[e] == b'.') && e - s < 45 {
        e += 1;
    }
    let resume = e;
    // Trailing punctuation: `fe80::1.` at the end of a sentence.
    while e > i + 1 && b[e - 1] == b'.' {
        e -= 1;
    }
    if e < b.len() && (is_alnum(b[e]) || b[e] == b'_') {
        return resume;
    }
    let mut cand = &cx.v[s..e];
    if !plausible_v6(cand) {
        // `[::1]:8080`-style trailing colon.
        if cand.ends_with(':') && !cand.ends_with("::") {
            cand = &cand[..cand.len() - 1];
            if !plausible_v6(cand) {
                return resume;
            }
            e -= 1;
        } else {
            return resume;
        }
    }
    let conf = if cand == "::1" { 0.6 } else { 0.85 };
    cx.push(types::IP_ADDRESS, s, e, conf, "ipv6");
    resume
}

/// A valid IPv6 text form that is unlikely to be something else: at least
/// two colons, and either all eight groups (or six plus an IPv4 tail) or
/// `::` with at least three hex digits (or exactly `::1`).
fn plausible_v6(s: &str) -> bool {
    let colons = s.bytes().filter(|&c| c == b':').count();
    if colons < 2 || !validate::ipv6(s) {
        return false;
    }
    if s == "::1" {
        return true;
    }
    if s.contains("::") {
        return s.bytes().filter(u8::is_ascii_hexdigit).count() >= 3;
    }
    colons == 7 || (colons == 6 && s.contains('.'))
}
