//! Secret-named fields: the whole value of `/db/password`,
//! `/auth/client_secret`, `/user/apiKey`, `/service/private_key` … is a
//! finding, whatever it looks like.

use crate::finding::types;
use crate::scanner::Cx;
use crate::secrets::placeholder;

/// Words that may follow `password` in a field that still holds one
/// (`password_confirmation`, `new_password2`, `password_hash`).
const PASSWORD_TAILS: &[&[u8]] = &[
    b"",
    b"confirm",
    b"confirmation",
    b"again",
    b"repeat",
    b"plain",
    b"plaintext",
    b"hash",
    b"hashed",
    b"digest",
    b"enc",
    b"encrypted",
    b"value",
    b"1",
    b"2",
];

const PASSWORD_WORDS: &[&[u8]] = &[
    b"password",
    b"passwd",
    b"passwort",
    b"passphrase",
    b"passcode",
    b"pswd",
    b"pwd",
];

const SECRET_ENDINGS: &[&[u8]] = &[
    b"secret",
    b"token",
    b"apikey",
    b"accesskey",
    b"secretkey",
    b"credentials",
    b"credential",
    b"creds",
    b"authorization",
    b"encryptionkey",
    b"masterkey",
    b"authkey",
    b"subscriptionkey",
    b"sharedkey",
    b"sessionkey",
    b"signingsecret",
    b"bearer",
];

/// `<word>_token` fields that hold counts, cursors or tokenizer symbols.
const NON_SECRET_TOKEN_PREFIXES: &[&[u8]] = &[
    b"max",
    b"min",
    b"num",
    b"total",
    b"prompt",
    b"completion",
    b"input",
    b"output",
    b"next",
    b"page",
    b"continuation",
    b"cursor",
    b"pagination",
    b"sync",
    b"reasoning",
    b"cached",
    b"cache",
    b"eos",
    b"bos",
    b"pad",
    b"unk",
    b"sep",
    b"cls",
    b"mask",
    b"stop",
    b"start",
    b"end",
    b"special",
];

/// The type of a secret-named field from its normalised name (lowercase
/// letters and digits), or `None`.
fn classify(n: &[u8]) -> Option<&'static str> {
    if n.is_empty() {
        return None;
    }
    let contains = |w: &[u8]| n.windows(w.len()).any(|x| x == w);
    if (contains(b"aws")
        && (n.ends_with(b"secretaccesskey")
            || n.ends_with(b"secretkey")
            || n.ends_with(b"sessiontoken")))
        || n == b"secretaccesskey"
    {
        return Some(types::AWS_KEY);
    }
    if n.ends_with(b"privatekey")
        || n.ends_with(b"privkey")
        || n.ends_with(b"privatekeypem")
        || n.ends_with(b"signingkey")
    {
        return Some(types::PRIVATE_KEY);
    }
    for w in PASSWORD_WORDS {
        if let Some(pos) = n.windows(w.len()).rposition(|x| x == *w) {
            let tail = &n[pos + w.len()..];
            if PASSWORD_TAILS.contains(&tail) {
                return Some(types::PASSWORD);
            }
        }
    }
    for end in SECRET_ENDINGS {
        if n.ends_with(end) {
            if *end == b"token" {
                let head = &n[..n.len() - end.len()];
                if NON_SECRET_TOKEN_PREFIXES.iter().any(|p| head.ends_with(p)) {
                    return None;
                }
            }
            return Some(types::API_KEY);
        }
    }
    None
}

/// The type reported for a value stored under the JSON field `segment`
/// (the last JSON Pointer segment, unescaped): `password` for
/// password-like names, `private_key` for private-key names, `aws_key`
/// for AWS secret names, `api_key` for other key/token/secret names, and
/// `None` for ordinary fields. Case, `-` and `_` are ignored.
pub fn secret_field_type(segment: &str) -> Option<&'static str> {
    let mut buf = [0u8; 48];
    let mut n = 0;
    for c in segment.bytes().filter(u8::is_ascii_alphanumeric) {
        if n == buf.len() {
            break;
        }
        buf[n] = c.to_ascii_lowercase();
        n += 1;
    }
    classify(&buf[..n])
}

pub(crate) fn detect(cx: &mut Cx<'_>) {
    let Some(ty) = classify(cx.path_norm()) else {
        return;
    };
    let v = cx.b;
    if placeholder(v) {
        return;
    }
    // `PWD`/`OLDPWD` in an environment dump hold a directory.
    let n = cx.path_norm();
    if (n == b"pwd" || n == b"oldpwd") && matches!(v.first(), Some(b'/' | b'~')) {
        return;
    }
    cx.push(ty, 0, v.len(), 0.9, "secret_field");
}
