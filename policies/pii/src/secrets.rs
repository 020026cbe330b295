//! Secrets: provider tokens recognised by their prefix (the gitleaks
//! approach: a cheap anchor, then a strict shape check), keyword
//! assignments (`password=…`, `api_key: "…"`, `Authorization: Bearer …`),
//! JWTs, PEM private keys and Azure client secrets.

use std::sync::OnceLock;

use crate::finding::types;
use crate::scanner::{Cx, is_alnum};
use crate::validate;

fn alnum(c: u8) -> bool {
    c.is_ascii_alphanumeric()
}
fn alnum_us(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}
fn b64url(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'_'
}
fn b64url_eq(c: u8) -> bool {
    b64url(c) || c == b'='
}
fn b64(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'+' || c == b'/' || c == b'='
}
fn b64_any(c: u8) -> bool {
    b64(c) || c == b'-' || c == b'_'
}
fn hexl(c: u8) -> bool {
    c.is_ascii_digit() || (b'a'..=b'f').contains(&c)
}
fn hex(c: u8) -> bool {
    c.is_ascii_hexdigit()
}
fn upper_alnum(c: u8) -> bool {
    c.is_ascii_uppercase() || c.is_ascii_digit()
}
fn alpha(c: u8) -> bool {
    c.is_ascii_alphabetic()
}
fn dotted_b64url(c: u8) -> bool {
    b64url(c) || c == b'.'
}
fn slack_path(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'/' || c == b'_' || c == b'-'
}
fn putty(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b':' || c == b' '
}

/// A token recognised by a fixed prefix and the shape of what follows.
struct Rule {
    /// Case-sensitive prefix, at a token start.
    prefix: &'static str,
    pii_type: &'static str,
    /// Rule name (for `Finding::rule`).
    name: &'static str,
    /// Characters allowed after the prefix.
    body: fn(u8) -> bool,
    /// Body length bounds (inclusive).
    min: u16,
    max: u16,
    /// Extra check on the whole token (prefix included).
    check: Option<fn(&[u8]) -> bool>,
    conf: f32,
    /// Generic rules only fire when no specific rule matched there.
    generic: bool,
}

const fn rule(
    prefix: &'static str,
    pii_type: &'static str,
    name: &'static str,
    body: fn(u8) -> bool,
    min: u16,
    max: u16,
    conf: f32,
) -> Rule {
    Rule {
        prefix,
        pii_type,
        name,
        body,
        min,
        max,
        check: None,
        conf,
        generic: false,
    }
}

const fn checked(mut r: Rule, check: fn(&[u8]) -> bool) -> Rule {
    r.check = Some(check);
    r
}

const fn generic(mut r: Rule) -> Rule {
    r.generic = true;
    r
}

use types::{API_KEY as K, AWS_KEY, GITHUB_TOKEN as GH, PRIVATE_KEY};

fn random_body(tok: &[u8]) -> bool {
    // Skip the prefix: everything up to the first `-` (`sk-`, `key-`).
    let body = match tok.iter().position(|&c| c == b'-') {
        Some(p) => &tok[p + 1..],
        None => tok,
    };
    validate::looks_random(body)
}

fn has_digit(tok: &[u8]) -> bool {
    tok.iter().any(u8::is_ascii_digit)
}

fn sendgrid(tok: &[u8]) -> bool {
    tok.len() == 69 && tok[25] == b'.'
}

fn postman(tok: &[u8]) -> bool {
    tok.len() == 59 && tok[29] == b'-'
}

fn aws_a3t(tok: &[u8]) -> bool {
    tok.len() == 20
        && tok[4..]
            .iter()
            .all(|&c| c.is_ascii_uppercase() || (b'2'..=b'7').contains(&c))
}

fn discord_bot(tok: &[u8]) -> bool {
    let mut parts = tok.split(|&c| c == b'.');
    let (Some(a), Some(b), Some(c), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    (24..=26).contains(&a.len())
        && (6..=7).contains(&b.len())
        && (27..=38).contains(&c.len())
        && a.iter().all(|&x| x.is_ascii_alphanumeric())
        && validate::looks_random(c)
}

fn jwt(tok: &[u8]) -> bool {
    let parts: Vec<&[u8]> = tok.split(|&c| c == b'.').collect();
    // Two parts: an unsigned token whose trailing `.` was trimmed.
    if !matches!(parts.len(), 2 | 3 | 5) {
        return false;
    }
    let (header, payload) = (parts[0], parts[1]);
    if header.len() < 10 || payload.len() < 2 {
        return false;
    }
    if parts.len() <= 3 && (!payload.starts_with(b"ey") || payload.len() < 10) {
        return false;
    }
    let mut buf = [0u8; 96];
    let n = b64_decode(&header[..header.len().min(128)], &mut buf);
    let h = &buf[..n];
    h.starts_with(b"{")
        && (contains(h, b"\"alg\"") || contains(h, b"\"typ\"") || contains(h, b"\"enc\""))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}

/// Decodes (standard or URL-safe, unpadded) base64 into `out`, stopping
/// at the first invalid character or when `out` is full. Returns the
/// number of bytes written.
fn b64_decode(input: &[u8], out: &mut [u8]) -> usize {
    let mut acc: u32 = 0;
    let mut bits = 0;
    let mut n = 0;
    for &c in input {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => break,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            if n == out.len() {
                break;
            }
            out[n] = (acc >> bits) as u8;
            n += 1;
        }
    }
    n
}

static RULES: &[Rule] = &[
    // GitHub.
    rule("ghp_", GH, "github_pat", alnum, 36, 255, 0.95),
    rule("gho_", GH, "github_oauth", alnum, 36, 255, 0.95),
    rule("ghu_", GH, "github_user_to_server", alnum, 36, 255, 0.95),
    rule("ghs_", GH, "github_server_to_server", alnum, 36, 255, 0.95),
    rule("ghr_", GH, "github_refresh", alnum, 36, 255, 0.95),
    rule(
        "github_pat_",
        GH,
        "github_fine_grained_pat",
        alnum_us,
        22,
        255,
        0.95,
    ),
    // GitLab.
    rule("glpat-", K, "gitlab_pat", b64url, 20, 255, 0.95),
    rule(
        "glptt-",
        K,
        "gitlab_pipeline_trigger",
        b64url,
        20,
        255,
        0.95,
    ),
    rule("glrt-", K, "gitlab_runner", b64url, 20, 255, 0.95),
    rule("gldt-", K, "gitlab_deploy", b64url, 20, 255, 0.95),
    rule("glsoat-", K, "gitlab_scim", b64url, 20, 255, 0.95),
    rule("glcbt-", K, "gitlab_cicd_job", b64url, 20, 255, 0.95),
    rule("glft-", K, "gitlab_feed", b64url, 20, 255, 0.95),
    rule("glimt-", K, "gitlab_incoming_mail", b64url, 20, 255, 0.95),
    rule("glagent-", K, "gitlab_agent", b64url, 50, 255, 0.95),
    rule("gloas-", K, "gitlab_oauth_secret", b64url, 40, 255, 0.95),
    rule(
        "GR1348941",
        K,
        "gitlab_runner_registration",
        b64url,
        20,
        255,
        0.95,
    ),
    // AWS.
    rule(
        "AKIA",
        AWS_KEY,
        "aws_access_key_id",
        upper_alnum,
        16,
        16,
        0.95,
    ),
    rule(
        "ASIA",
        AWS_KEY,
        "aws_access_key_id",
        upper_alnum,
        16,
        16,
        0.95,
    ),
    rule(
        "ABIA",
        AWS_KEY,
        "aws_access_key_id",
        upper_alnum,
        16,
        16,
        0.9,
    ),
    rule(
        "ACCA",
        AWS_KEY,
        "aws_access_key_id",
        upper_alnum,
        16,
        16,
        0.9,
    ),
    checked(
        rule(
            "A3T",
            AWS_KEY,
            "aws_access_key_id",
            upper_alnum,
            17,
            17,
            0.85,
        ),
        aws_a3t,
    ),
    // OpenAI, Anthropic and other LLM providers.
    rule("sk-proj-", K, "openai_project", b64url, 20, 400, 0.95),
    rule(
        "sk-svcacct-",
        K,
        "openai_service_account",
        b64url,
        20,
        400,
        0.95,
    ),
    rule("sk-admin-", K, "openai_admin", b64url, 20, 400, 0.95),
    rule("sk-None-", K, "openai_legacy_user", b64url, 20, 400, 0.95),
    rule("sk-ant-", K, "anthropic", b64url, 20, 400, 0.95),
    generic(checked(
        rule("sk-", K, "sk_key", b64url, 20, 400, 0.8),
        random_body,
    )),
    generic(checked(
        rule("key-", K, "key_prefixed", alnum, 16, 128, 0.7),
        random_body,
    )),
    rule("gsk_", K, "groq", alnum, 48, 60, 0.9),
    rule("xai-", K, "xai", alnum, 70, 90, 0.9),
    rule("r8_", K, "replicate", alnum, 37, 40, 0.85),
    rule("pplx-", K, "perplexity", alnum, 40, 60, 0.9),
    rule("tvly-", K, "tavily", b64url, 32, 64, 0.9),
    rule("csk-", K, "cerebras", alnum, 40, 60, 0.85),
    rule("pcsk_", K, "pinecone", alnum_us, 60, 120, 0.9),
    rule("lsv2_pt_", K, "langsmith", alnum_us, 40, 60, 0.9),
    rule("lsv2_sk_", K, "langsmith", alnum_us, 40, 60, 0.9),
    rule("hf_", K, "huggingface", alpha, 34, 34, 0.9),
    rule("api_org_", K, "huggingface_org", alpha, 34, 34, 0.9),
    // Google.
    rule("AIza", K, "google_api_key", b64url, 35, 35, 0.95),
    rule("GOCSPX-", K, "google_oauth_secret", b64url, 28, 28, 0.95),
    rule("ya29.", K, "google_oauth_token", b64url, 20, 2048, 0.85),
    // Slack.
    checked(
        rule("xoxb-", K, "slack_bot", b64url, 10, 255, 0.95),
        has_digit,
    ),
    checked(
        rule("xoxp-", K, "slack_user", b64url, 10, 255, 0.95),
        has_digit,
    ),
    checked(
        rule("xoxa-", K, "slack_app", b64url, 10, 255, 0.95),
        has_digit,
    ),
    checked(
        rule("xoxr-", K, "slack_refresh", b64url, 10, 255, 0.95),
        has_digit,
    ),
    checked(
        rule("xoxs-", K, "slack_session", b64url, 10, 255, 0.95),
        has_digit,
    ),
    checked(
        rule("xoxe-", K, "slack_config", b64url, 10, 255, 0.95),
        has_digit,
    ),
    checked(
        rule("xoxe.xoxp-", K, "slack_config", b64url, 10, 255, 0.95),
        has_digit,
    ),
    checked(
        rule("xapp-", K, "slack_app_token", b64url, 10, 255, 0.95),
        has_digit,
    ),
    rule(
        "hooks.slack.com/services/",
        K,
        "slack_webhook",
        slack_path,
        20,
        200,
        0.95,
    ),
    rule(
        "hooks.slack.com/workflows/",
        K,
        "slack_webhook",
        slack_path,
        20,
        200,
        0.95,
    ),
    // Payments.
    rule("sk_live_", K, "stripe", alnum, 10, 255, 0.95),
    rule("sk_test_", K, "stripe", alnum, 10, 255, 0.95),
    rule("sk_prod_", K, "stripe", alnum, 10, 255, 0.95),
    rule("rk_live_", K, "stripe_restricted", alnum, 10, 255, 0.95),
    rule("rk_test_", K, "stripe_restricted", alnum, 10, 255, 0.95),
    rule("rk_prod_", K, "stripe_restricted", alnum, 10, 255, 0.95),
    rule("whsec_", K, "stripe_webhook_secret", b64, 24, 255, 0.9),
    rule("sq0atp-", K, "square_access_token", b64url, 22, 22, 0.9),
    rule("sq0csp-", K, "square_oauth_secret", b64url, 43, 43, 0.9),
    rule("FLWSECK_TEST-", K, "flutterwave", hex, 32, 32, 0.95),
    rule("FLWSECK-", K, "flutterwave", hex, 32, 32, 0.95),
    // Package registries.
    rule("npm_", K, "npm", alnum, 36, 36, 0.9),
    rule("pypi-AgEIcHlwaS5vcmc", K, "pypi", b64url, 50, 1000, 0.95),
    rule(
        "pypi-AgENdGVzdC5weXBpLm9yZw",
        K,
        "pypi_test",
        b64url,
        50,
        1000,
        0.95,
    ),
    rule("rubygems_", K, "rubygems", hexl, 48, 48, 0.95),
    rule("dckr_pat_", K, "docker_hub", b64url, 27, 40, 0.95),
    rule("oy2", K, "nuget", alnum, 43, 43, 0.8),
    rule("CLOJARS_", K, "clojars", alnum, 60, 60, 0.9),
    // Messaging and e-mail.
    checked(
        rule("SG.", K, "sendgrid", dotted_b64url, 66, 66, 0.95),
        sendgrid,
    ),
    rule("SK", K, "twilio_api_key", hex, 32, 32, 0.8),
    rule(
        "discord.com/api/webhooks/",
        K,
        "discord_webhook",
        slack_path,
        60,
        140,
        0.95,
    ),
    rule(
        "discordapp.com/api/webhooks/",
        K,
        "discord_webhook",
        slack_path,
        60,
        140,
        0.95,
    ),
    // Cloud and developer platforms.
    rule("dop_v1_", K, "digitalocean_pat", hexl, 64, 64, 0.95),
    rule("doo_v1_", K, "digitalocean_oauth", hexl, 64, 64, 0.95),
    rule("dor_v1_", K, "digitalocean_refresh", hexl, 64, 64, 0.95),
    rule("AccountKey=", K, "azure_storage_key", b64, 86, 90, 0.9),
    rule(
        "SharedAccessKey=",
        K,
        "azure_shared_access_key",
        b64,
        40,
        90,
        0.9,
    ),
    rule("shpat_", K, "shopify", hex, 32, 32, 0.95),
    rule("shpca_", K, "shopify", hex, 32, 32, 0.95),
    rule("shppa_", K, "shopify", hex, 32, 32, 0.95),
    rule("shpss_", K, "shopify", hex, 32, 32, 0.95),
    rule("ATATT3", K, "atlassian", b64url_eq, 100, 400, 0.9),
    rule("dapi", K, "databricks", hexl, 32, 32, 0.85),
    checked(rule("PMAK-", K, "postman", b64url, 54, 54, 0.95), postman),
    rule("lin_api_", K, "linear", alnum, 40, 40, 0.95),
    rule("ntn_", K, "notion", alnum, 40, 60, 0.85),
    rule("dp.pt.", K, "doppler", alnum, 40, 50, 0.9),
    rule("dp.st.", K, "doppler", alnum_us, 40, 60, 0.9),
    rule("dp.ct.", K, "doppler", alnum, 40, 50, 0.9),
    rule("dp.sa.", K, "doppler", alnum, 40, 50, 0.9),
    rule("glc_", K, "grafana_cloud", b64, 32, 400, 0.9),
    rule("glsa_", K, "grafana_service_account", alnum_us, 41, 41, 0.9),
    rule("hvs.", K, "vault_service_token", b64url, 90, 300, 0.9),
    rule("hvb.", K, "vault_batch_token", b64url, 130, 400, 0.9),
    rule("pul-", K, "pulumi", hexl, 40, 40, 0.9),
    rule("sntrys_", K, "sentry_org_token", b64_any, 50, 500, 0.9),
    rule("sntryu_", K, "sentry_user_token", hexl, 64, 64, 0.9),
    rule("NRAK-", K, "new_relic", upper_alnum, 27, 27, 0.9),
    rule("LTAI", K, "alibaba_access_key", alnum, 20, 20, 0.8),
    rule("sk.eyJ", K, "mapbox_secret", dotted_b64url, 80, 300, 0.9),
    rule("sl.", K, "dropbox", b64url, 130, 200, 0.8),
    rule("figd_", K, "figma", b64url, 40, 40, 0.9),
    rule("sbp_", K, "supabase", hexl, 40, 40, 0.9),
    rule("HRKU-", K, "heroku", b64url, 60, 60, 0.95),
    rule("pscale_tkn_", K, "planetscale", alnum_us, 32, 64, 0.95),
    rule("pscale_oauth_", K, "planetscale", alnum_us, 32, 64, 0.95),
    rule(
        "pscale_pw_",
        types::PASSWORD,
        "planetscale_password",
        alnum_us,
        32,
        64,
        0.95,
    ),
    rule(
        "ops_eyJ",
        K,
        "onepassword_service_account",
        b64,
        250,
        2000,
        0.95,
    ),
    checked(
        rule("sk_", K, "elevenlabs", hexl, 48, 48, 0.8),
        |t: &[u8]| has_digit(t),
    ),
    // Discord bot tokens: base64 of the numeric bot id, then two parts.
    checked(
        rule("MT", K, "discord_bot_token", dotted_b64url, 55, 80, 0.85),
        discord_bot,
    ),
    checked(
        rule("Mj", K, "discord_bot_token", dotted_b64url, 55, 80, 0.85),
        discord_bot,
    ),
    checked(
        rule("Mz", K, "discord_bot_token", dotted_b64url, 55, 80, 0.85),
        discord_bot,
    ),
    checked(
        rule("ND", K, "discord_bot_token", dotted_b64url, 55, 80, 0.85),
        discord_bot,
    ),
    checked(
        rule("NT", K, "discord_bot_token", dotted_b64url, 55, 80, 0.85),
        discord_bot,
    ),
    checked(
        rule("Nj", K, "discord_bot_token", dotted_b64url, 55, 80, 0.85),
        discord_bot,
    ),
    checked(
        rule("Nz", K, "discord_bot_token", dotted_b64url, 55, 80, 0.85),
        discord_bot,
    ),
    checked(
        rule("OD", K, "discord_bot_token", dotted_b64url, 55, 80, 0.85),
        discord_bot,
    ),
    checked(
        rule("OT", K, "discord_bot_token", dotted_b64url, 55, 80, 0.85),
        discord_bot,
    ),
    // JWTs.
    checked(
        rule("eyJ", types::JWT, "jwt", dotted_b64url, 20, 4096, 0.95),
        jwt,
    ),
    // Private keys that are not PEM blocks.
    rule(
        "AGE-SECRET-KEY-1",
        PRIVATE_KEY,
        "age_secret_key",
        upper_alnum,
        58,
        58,
        0.95,
    ),
    rule(
        "PuTTY-User-Key-File-",
        PRIVATE_KEY,
        "putty_private_key",
        putty,
        1,
        60,
        0.9,
    ),
];

/// Prefilters for rules (case-sensitive prefixes) and keywords
/// (lowercased): a 64 Ki-bit set over a hash of the first three bytes,
/// then a sorted `(first two bytes, index)` list. Nearly every token is
/// rejected by one bit test.
pub(crate) struct Tables {
    rule_bits: Box<[u64; 1024]>,
    rules: Vec<(u16, u16)>,
    kw_bits: Box<[u64; 1024]>,
    keywords: Vec<(u16, u16)>,
    /// Keywords and rule prefixes, lowercased: the first, cheap test.
    any_bits: Box<[u64; 1024]>,
}

#[inline]
fn pair(a: u8, b: u8) -> u16 {
    (u16::from(a) << 8) | u16::from(b)
}

#[inline]
fn tri(a: u8, b: u8, c: u8) -> u16 {
    let h = (u32::from(a) << 16 | u32::from(b) << 8 | u32::from(c)).wrapping_mul(0x9E37_79B1);
    (h >> 16) as u16
}

#[inline]
fn bit(set: &[u64; 1024], p: u16) -> bool {
    set[(p >> 6) as usize] & (1 << (p & 63)) != 0
}

fn set_bit(set: &mut [u64; 1024], p: u16) {
    set[(p >> 6) as usize] |= 1 << (p & 63);
}

impl Tables {
    pub(crate) fn get() -> &'static Tables {
        static TABLES: OnceLock<Tables> = OnceLock::new();
        TABLES.get_or_init(|| {
            let mut t = Tables {
                rule_bits: Box::new([0; 1024]),
                rules: Vec::new(),
                kw_bits: Box::new([0; 1024]),
                keywords: Vec::new(),
                any_bits: Box::new([0; 1024]),
            };
            // Specific rules sort before generic ones with the same pair:
            // generic ones only fire when no specific rule matched.
            let mut rules: Vec<(u16, bool, u16)> = Vec::new();
            for (i, r) in RULES.iter().enumerate() {
                let p = r.prefix.as_bytes();
                rules.push((pair(p[0], p[1]), r.generic, i as u16));
                if p.len() >= 3 {
                    set_bit(&mut t.rule_bits, tri(p[0], p[1], p[2]));
                    set_bit(&mut t.any_bits, tri(p[0] | 0x20, p[1] | 0x20, p[2] | 0x20));
                } else {
                    // Two-byte prefix: any body byte may follow.
                    for c in 0..=255u8 {
                        if (r.body)(c) {
                            set_bit(&mut t.rule_bits, tri(p[0], p[1], c));
                            set_bit(&mut t.any_bits, tri(p[0] | 0x20, p[1] | 0x20, c | 0x20));
                        }
                    }
                }
            }
            insertion_sort(&mut rules);
            t.rules = rules.into_iter().map(|(p, _, i)| (p, i)).collect();
            for (i, k) in KEYWORDS.iter().enumerate() {
                let w = k.word.as_bytes();
                set_bit(&mut t.kw_bits, tri(w[0], w[1], w[2]));
                set_bit(&mut t.any_bits, tri(w[0], w[1], w[2]));
                t.keywords.push((pair(w[0], w[1]), i as u16));
            }
            insertion_sort(&mut t.keywords);
            t
        })
    }

    /// True when a keyword may start at `k`.
    #[inline]
    pub(crate) fn keyword_at(&self, b: &[u8], k: usize) -> bool {
        k + 2 < b.len()
            && bit(
                &self.kw_bits,
                tri(b[k] | 0x20, b[k + 1] | 0x20, b[k + 2] | 0x20),
            )
    }

    /// True when a keyword or a rule prefix may start at `i` (one test
    /// for the common case of neither).
    #[inline]
    pub(crate) fn anything_at(&self, b: &[u8], i: usize) -> bool {
        i + 2 < b.len()
            && bit(
                &self.any_bits,
                tri(b[i] | 0x20, b[i + 1] | 0x20, b[i + 2] | 0x20),
            )
    }

    /// True when a rule prefix may start at `i`.
    #[inline]
    pub(crate) fn rule_at(&self, b: &[u8], i: usize) -> bool {
        i + 2 < b.len() && bit(&self.rule_bits, tri(b[i], b[i + 1], b[i + 2]))
    }
}

/// For the two small tables built once (keeps sort code out of the wasm).
fn insertion_sort<T: Ord>(v: &mut [T]) {
    for i in 1..v.len() {
        let mut j = i;
        while j > 0 && v[j - 1] > v[j] {
            v.swap(j - 1, j);
            j -= 1;
        }
    }
}

fn entries(list: &[(u16, u16)], p: u16) -> impl Iterator<Item = u16> + '_ {
    let start = list.partition_point(|&(q, _)| q < p);
    list[start..]
        .iter()
        .take_while(move |&&(q, _)| q == p)
        .map(|&(_, i)| i)
}

/// Provider-prefixed tokens starting at `i` (a token start). Returns the
/// end of the longest match.
#[inline(never)]
pub(crate) fn prefixes(cx: &mut Cx<'_>, i: usize) -> Option<usize> {
    let b = cx.b;
    let tables = cx.tables;
    let candidates = entries(&tables.rules, pair(b[i], b[i + 1]));
    let mut best: Option<usize> = None;
    let mut specific = false;
    for ri in candidates {
        let r = &RULES[ri as usize];
        if r.generic && specific {
            continue;
        }
        let p = r.prefix.as_bytes();
        if !b[i..].starts_with(p) {
            continue;
        }
        let body = i + p.len();
        let limit = (body + r.max as usize + 1).min(b.len());
        let mut k = body;
        while k < limit && (r.body)(b[k]) {
            k += 1;
        }
        // Too long, or glued to more letters/digits: not this token.
        if k < b.len() && ((r.body)(b[k]) || is_alnum(b[k])) {
            continue;
        }
        // Trailing dots are punctuation, not part of a dotted token.
        while k > body && b[k - 1] == b'.' {
            k -= 1;
        }
        let len = k - body;
        if len < r.min as usize || len > r.max as usize {
            continue;
        }
        if let Some(check) = r.check
            && !check(&b[i..k])
        {
            continue;
        }
        cx.push(r.pii_type, i, k, r.conf, r.name);
        if !r.generic {
            specific = true;
        }
        best = Some(best.map_or(k, |e: usize| e.max(k)));
    }
    best
}

/// What a keyword introduces.
#[derive(Clone, Copy)]
enum Kw {
    /// `password=…`: any plausible value.
    Password,
    /// `api_key: …`, `token=…`: a random-looking value.
    Secret(&'static str),
    /// `aws_secret_access_key = …`: 40 base64 characters.
    AwsSecret,
    /// `Bearer <token>`.
    Bearer,
    /// `Basic <base64 user:password>`.
    Basic,
    /// A provider name followed by an assignment of a value of a known
    /// shape (gitleaks' keyword-anchored rules).
    Provider(&'static str, fn(&[u8]) -> bool),
}

struct Keyword {
    /// Lowercase.
    word: &'static str,
    kind: Kw,
}

fn uuid(v: &[u8]) -> bool {
    v.len() == 36
        && v.iter().enumerate().all(|(i, &c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == b'-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}
fn hex32(v: &[u8]) -> bool {
    v.len() == 32 && v.iter().all(|&c| hex(c))
}
fn hex40(v: &[u8]) -> bool {
    v.len() == 40 && v.iter().all(|&c| hex(c))
}
fn hex64(v: &[u8]) -> bool {
    v.len() == 64 && v.iter().all(|&c| hex(c))
}
fn alnum40(v: &[u8]) -> bool {
    v.len() == 40 && v.iter().all(|&c| b64url(c)) && validate::looks_random(v)
}
fn alnum32(v: &[u8]) -> bool {
    v.len() == 32 && v.iter().all(|&c| alnum(c)) && validate::looks_random(v)
}
fn okta(v: &[u8]) -> bool {
    v.len() == 42 && v.starts_with(b"00") && v.iter().all(|&c| b64url(c))
}
fn mailchimp(v: &[u8]) -> bool {
    v.len() >= 36
        && hex32(&v[..32])
        && v[32..].starts_with(b"-us")
        && v[35..].iter().all(u8::is_ascii_digit)
}
fn discord_secret(v: &[u8]) -> bool {
    hex64(v) || (v.len() == 32 && v.iter().all(|&c| b64url(c)) && validate::looks_random(v))
}

static KEYWORDS: &[Keyword] = &[
    Keyword {
        word: "password",
        kind: Kw::Password,
    },
    Keyword {
        word: "passwd",
        kind: Kw::Password,
    },
    Keyword {
        word: "pwd",
        kind: Kw::Password,
    },
    Keyword {
        word: "pswd",
        kind: Kw::Password,
    },
    Keyword {
        word: "passphrase",
        kind: Kw::Password,
    },
    Keyword {
        word: "passcode",
        kind: Kw::Password,
    },
    Keyword {
        word: "passwort",
        kind: Kw::Password,
    },
    Keyword {
        word: "secret",
        kind: Kw::Secret(K),
    },
    Keyword {
        word: "token",
        kind: Kw::Secret(K),
    },
    Keyword {
        word: "apikey",
        kind: Kw::Secret(K),
    },
    Keyword {
        word: "api_key",
        kind: Kw::Secret(K),
    },
    Keyword {
        word: "api-key",
        kind: Kw::Secret(K),
    },
    Keyword {
        word: "api key",
        kind: Kw::Secret(K),
    },
    Keyword {
        word: "apitoken",
        kind: Kw::Secret(K),
    },
    Keyword {
        word: "apisecret",
        kind: Kw::Secret(K),
    },
    Keyword {
        word: "accesskey",
        kind: Kw::Secret(K),
    },
    Keyword {
        word: "access_key",
        kind: Kw::Secret(K),
    },
    Keyword {
        word: "access-key",
        kind: Kw::Secret(K),
    },
    Keyword {
        word: "accesstoken",
        kind: Kw::Secret(K),
    },
    Keyword {
        word: "authtoken",
        kind: Kw::Secret(K),
    },
    Keyword {
        word: "authkey",
        kind: Kw::Secret(K),
    },
    Keyword {
        word: "auth_key",
        kind: Kw::Secret(K),
    },
    Keyword {
        word: "clientsecret",
        kind: Kw::Secret(K),
    },
    Keyword {
        word: "appsecret",
        kind: Kw::Secret(K),
    },
    Keyword {
        word: "private_key",
        kind: Kw::Secret(PRIVATE_KEY),
    },
    Keyword {
        word: "privatekey",
        kind: Kw::Secret(PRIVATE_KEY),
    },
    Keyword {
        word: "private-key",
        kind: Kw::Secret(PRIVATE_KEY),
    },
    Keyword {
        word: "privkey",
        kind: Kw::Secret(PRIVATE_KEY),
    },
    Keyword {
        word: "aws_secret_access_key",
        kind: Kw::AwsSecret,
    },
    Keyword {
        word: "aws_secret_key",
        kind: Kw::AwsSecret,
    },
    Keyword {
        word: "aws_secret",
        kind: Kw::AwsSecret,
    },
    Keyword {
        word: "awssecretaccesskey",
        kind: Kw::AwsSecret,
    },
    Keyword {
        word: "secret_access_key",
        kind: Kw::AwsSecret,
    },
    Keyword {
        word: "secretaccesskey",
        kind: Kw::AwsSecret,
    },
    Keyword {
        word: "bearer",
        kind: Kw::Bearer,
    },
    Keyword {
        word: "basic",
        kind: Kw::Basic,
    },
    Keyword {
        word: "heroku",
        kind: Kw::Provider("heroku_api_key", uuid),
    },
    Keyword {
        word: "datadog",
        kind: Kw::Provider("datadog", hex40),
    },
    Keyword {
        word: "discord",
        kind: Kw::Provider("discord", discord_secret),
    },
    Keyword {
        word: "okta",
        kind: Kw::Provider("okta", okta),
    },
    Keyword {
        word: "cloudflare",
        kind: Kw::Provider("cloudflare", alnum40),
    },
    Keyword {
        word: "algolia",
        kind: Kw::Provider("algolia", hex32),
    },
    Keyword {
        word: "mailchimp",
        kind: Kw::Provider("mailchimp", mailchimp),
    },
    Keyword {
        word: "twilio",
        kind: Kw::Provider("twilio", hex32),
    },
    Keyword {
        word: "cohere",
        kind: Kw::Provider("cohere", alnum40),
    },
    Keyword {
        word: "mistral",
        kind: Kw::Provider("mistral", alnum32),
    },
    Keyword {
        word: "deepseek",
        kind: Kw::Provider("deepseek", alnum32),
    },
    Keyword {
        word: "azure",
        kind: Kw::Provider("azure_key", alnum32),
    },
    Keyword {
        word: "sentry",
        kind: Kw::Provider("sentry", hex32),
    },
    Keyword {
        word: "newrelic",
        kind: Kw::Provider("new_relic", alnum40),
    },
    Keyword {
        word: "pagerduty",
        kind: Kw::Provider("pagerduty", alnum_20),
    },
    Keyword {
        word: "bitbucket",
        kind: Kw::Provider("bitbucket", alnum32),
    },
    Keyword {
        word: "netlify",
        kind: Kw::Provider("netlify", alnum_43),
    },
    Keyword {
        word: "vercel",
        kind: Kw::Provider("vercel", alnum_24),
    },
    Keyword {
        word: "wandb",
        kind: Kw::Provider("wandb", hex40),
    },
];

fn alnum_20(v: &[u8]) -> bool {
    v.len() == 20 && v.iter().all(|&c| b64url(c)) && validate::looks_random(v)
}
fn alnum_24(v: &[u8]) -> bool {
    v.len() == 24 && v.iter().all(|&c| alnum(c)) && validate::looks_random(v)
}
fn alnum_43(v: &[u8]) -> bool {
    v.len() == 43 && v.iter().all(|&c| b64url(c)) && validate::looks_random(v)
}

/// Keyword assignments at word start `k`.
#[inline(never)]
pub(crate) fn keyword(cx: &mut Cx<'_>, k: usize) {
    let b = cx.b;
    let tables = cx.tables;
    let p2 = pair(b[k] | 0x20, b[k + 1] | 0x20);
    for ki in entries(&tables.keywords, p2) {
        let kw = &KEYWORDS[ki as usize];
        let w = kw.word.as_bytes();
        if b.len() - k < w.len() || !b[k..k + w.len()].eq_ignore_ascii_case(w) {
            continue;
        }
        let p = k + w.len();
        // The keyword must end a word: `passwords`, `tokenizer` do not count;
        // a camel-case or separator continuation (`tokenValue`) may.
        if let Some(&nx) = b.get(p) {
            let last_upper = b[p - 1].is_ascii_uppercase();
            if nx.is_ascii_lowercase()
                || nx.is_ascii_digit()
                || (nx.is_ascii_uppercase() && last_upper)
            {
                continue;
            }
        }
        match kw.kind {
            Kw::Password => password(cx, p),
            Kw::Secret(ty) => secret(cx, p, ty),
            Kw::AwsSecret => aws_secret(cx, p),
            Kw::Bearer => bearer(cx, p),
            Kw::Basic => basic(cx, p),
            Kw::Provider(name, shape) => {
                if let Some((s, e)) = assigned_value(b, p, true)
                    && shape(&b[s..e])
                {
                    cx.push(K, s, e, 0.8, name);
                }
            }
        }
    }
}

fn is_quote(c: u8) -> bool {
    matches!(c, b'"' | b'\'' | b'`')
}

/// Parses `[suffix][quote] (=|:|:=|=>) [quote]value` after a keyword
/// ending at `p` and returns the value's span.
pub(crate) fn assigned_value(b: &[u8], p: usize, allow_suffix: bool) -> Option<(usize, usize)> {
    let n = b.len();
    let mut j = p;
    if allow_suffix {
        let lim = (j + 24).min(n);
        while j < lim && (alnum(b[j]) || matches!(b[j], b'_' | b'-' | b'.')) {
            j += 1;
        }
    }
    // Closing quote of a quoted key (also JSON-escaped inside a string).
    if j + 1 < n && b[j] == b'\\' && is_quote(b[j + 1]) {
        j += 2;
    } else if j < n && is_quote(b[j]) {
        j += 1;
    }
    let mut sp = 0;
    while j < n && matches!(b[j], b' ' | b'\t') && sp < 8 {
        j += 1;
        sp += 1;
    }
    // Separator.
    let rest = &b[j.min(n)..];
    let sep = if rest.starts_with(b":=") || rest.starts_with(b"=>") {
        2
    } else if rest.starts_with(b"==") || rest.starts_with(b"://") {
        return None;
    } else if rest.starts_with(b"=") || rest.starts_with(b":") {
        1
    } else {
        return None;
    };
    j += sep;
    sp = 0;
    while j < n && matches!(b[j], b' ' | b'\t') && sp < 8 {
        j += 1;
        sp += 1;
    }
    if j >= n {
        return None;
    }
    // Quoted value.
    let (escaped, quote) = if j + 1 < n && b[j] == b'\\' && is_quote(b[j + 1]) {
        (true, Some(b[j + 1]))
    } else if is_quote(b[j]) {
        (false, Some(b[j]))
    } else {
        (false, None)
    };
    if let Some(q) = quote {
        let s = j + if escaped { 2 } else { 1 };
        let lim = (s + 512).min(n);
        let mut e = s;
        while e < lim && b[e] != b'\n' {
            if b[e] == q && (!escaped || b[e - 1] == b'\\') {
                let end = if escaped { e - 1 } else { e };
                return (end > s).then_some((s, end));
            }
            e += 1;
        }
        return None;
    }
    let s = j;
    // Template references: `${DB_PASSWORD}`, `{{ secret }}`.
    for (open, close) in [(&b"${"[..], &b"}"[..]), (b"{{", b"}}")] {
        if b[s..].starts_with(open)
            && let Some(p) = memchr::memmem::find(&b[s..(s + 256).min(n)], close)
        {
            return Some((s, s + p + close.len()));
        }
    }
    let lim = (s + 512).min(n);
    let mut e = s;
    while e < lim
        && !b[e].is_ascii_whitespace()
        && !matches!(
            b[e],
            b'"' | b'\''
                | b'`'
                | b','
                | b';'
                | b'&'
                | b'<'
                | b'>'
                | b'('
                | b')'
                | b'['
                | b']'
                | b'{'
                | b'}'
                | b'\\'
        )
    {
        e += 1;
    }
    while e > s && matches!(b[e - 1], b'.' | b':' | b'!' | b'?') {
        e -= 1;
    }
    (e > s).then_some((s, e))
}

/// Values that are clearly not a secret: placeholders, masks, markers,
/// environment references and booleans.
pub(crate) fn placeholder(v: &[u8]) -> bool {
    const WORDS: &[&[u8]] = &[
        b"null",
        b"none",
        b"nil",
        b"undefined",
        b"true",
        b"false",
        b"yes",
        b"no",
        b"n/a",
        b"na",
        b"empty",
        b"hidden",
        b"redacted",
        b"masked",
        b"xxx",
        b"tbd",
        b"todo",
        b"required",
        b"optional",
        b"string",
        b"str",
    ];
    let t = v.trim_ascii();
    if t.is_empty() {
        return true;
    }
    if WORDS.iter().any(|w| t.eq_ignore_ascii_case(w)) {
        return true;
    }
    let first = t[0];
    if t.iter().all(|&c| c == first)
        && matches!(first, b'*' | b'x' | b'X' | b'.' | b'#' | b'-' | b'?')
    {
        return true;
    }
    if t.starts_with("•".as_bytes()) || t.starts_with(b"[REDACTED") || t.starts_with(b"[HASH:") {
        return true;
    }
    if t.starts_with(b"${") || t.starts_with(b"{{") || t.starts_with(b"%(") || t == b"%s" {
        return true;
    }
    if t.starts_with(b"<") && t.ends_with(b">") {
        return true;
    }
    // `$DB_PASSWORD`, `process.env.X`, `os.environ[...]`.
    if t[0] == b'$'
        && t.len() > 1
        && t[1..]
            .iter()
            .all(|&c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_')
    {
        return true;
    }
    t.starts_with(b"process.env") || t.starts_with(b"os.environ") || t.starts_with(b"env.")
}

/// Ordinary words that follow `password:` in prose ("Reset your
/// password: click the link") rather than a password.
fn prose_word(v: &[u8]) -> bool {
    const WORDS: &[&[u8]] = &[
        b"is",
        b"was",
        b"the",
        b"a",
        b"an",
        b"and",
        b"or",
        b"to",
        b"for",
        b"of",
        b"in",
        b"on",
        b"at",
        b"by",
        b"with",
        b"from",
        b"this",
        b"that",
        b"it",
        b"missing",
        b"invalid",
        b"incorrect",
        b"wrong",
        b"expired",
        b"reset",
        b"changed",
        b"updated",
        b"set",
        b"unset",
        b"click",
        b"enter",
        b"your",
        b"please",
        b"must",
        b"should",
        b"will",
        b"can",
        b"cannot",
        b"not",
        b"new",
        b"old",
        b"field",
        b"policy",
        b"hint",
        b"strength",
        b"length",
        b"minimum",
        b"maximum",
        b"min",
        b"max",
        b"characters",
        b"chars",
        b"here",
        b"below",
        b"above",
        b"protected",
        b"secure",
        b"strong",
        b"weak",
        b"type",
        b"text",
        b"value",
        b"see",
        b"same",
        b"ok",
        b"success",
        b"failed",
        b"error",
        b"use",
        b"using",
        b"forgot",
        b"forgotten",
        b"change",
        b"update",
        b"manager",
        b"login",
        b"authentication",
        b"auth",
        b"stored",
        b"saved",
        b"generated",
        b"random",
    ];
    WORDS.iter().any(|w| v.eq_ignore_ascii_case(w))
}

fn password(cx: &mut Cx<'_>, p: usize) {
    let b = cx.b;
    let Some((s, e)) = assigned_value(b, p, false) else {
        return;
    };
    let v = &b[s..e];
    if v.len() > 256 || placeholder(v) || prose_word(v) {
        return;
    }
    let quoted = s > 0 && is_quote(b[s - 1]);
    let conf = if quoted { 0.85 } else { 0.8 };
    cx.push(types::PASSWORD, s, e, conf, "password_assignment");
}

fn secret_chars(v: &[u8]) -> bool {
    v.iter().all(|&c| {
        c.is_ascii_alphanumeric()
            || matches!(c, b'_' | b'-' | b'.' | b'/' | b'+' | b'=' | b'~' | b':')
    })
}

fn secret(cx: &mut Cx<'_>, p: usize, ty: &'static str) {
    let b = cx.b;
    let Some((s, e)) = assigned_value(b, p, true) else {
        return;
    };
    let v = &b[s..e];
    if v.len() < 10 || !secret_chars(v) || placeholder(v) || !validate::looks_random(v) {
        return;
    }
    cx.push(ty, s, e, 0.7, "secret_assignment");
}

fn aws_secret(cx: &mut Cx<'_>, p: usize) {
    let b = cx.b;
    let Some((s, e)) = assigned_value(b, p, true) else {
        return;
    };
    let v = &b[s..e];
    if v.len() == 40
        && v.iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'/' || c == b'+')
        && validate::looks_random(v)
    {
        cx.push(AWS_KEY, s, e, 0.9, "aws_secret_access_key");
    }
}

fn bearer(cx: &mut Cx<'_>, p: usize) {
    let b = cx.b;
    let mut s = p;
    while s < b.len() && b[s] == b' ' && s - p < 3 {
        s += 1;
    }
    if s == p {
        return;
    }
    let mut e = s;
    while e < b.len() && (b64_any(b[e]) || matches!(b[e], b'.' | b'~')) {
        e += 1;
    }
    let v = &b[s..e];
    if v.len() >= 16 && validate::looks_random(v) {
        cx.push(K, s, e, 0.8, "bearer_token");
    }
}

fn basic(cx: &mut Cx<'_>, p: usize) {
    let b = cx.b;
    let mut s = p;
    while s < b.len() && b[s] == b' ' && s - p < 3 {
        s += 1;
    }
    if s == p {
        return;
    }
    let mut e = s;
    while e < b.len() && b64(b[e]) {
        e += 1;
    }
    if e - s < 8 || !(e - s).is_multiple_of(4) || e - s > 400 {
        return;
    }
    let mut buf = [0u8; 300];
    let n = b64_decode(&b[s..e], &mut buf);
    let d = &buf[..n];
    if let Some(colon) = d.iter().position(|&c| c == b':')
        && colon > 0
        && colon + 1 < d.len()
        && d.iter().all(|&c| (0x20..0x7f).contains(&c))
    {
        cx.push(types::PASSWORD, s, e, 0.85, "basic_auth");
    }
}

/// `-----BEGIN … PRIVATE KEY-----` blocks (RSA, EC, DSA, OPENSSH,
/// ENCRYPTED, PGP … KEY BLOCK), through the matching END line when present.
pub(crate) fn dash(cx: &mut Cx<'_>, i: usize) -> usize {
    let b = cx.b;
    const BEGIN: &[u8] = b"-----BEGIN ";
    if !b[i..].starts_with(BEGIN) {
        return i + 1;
    }
    let label_start = i + BEGIN.len();
    let lim = (label_start + 64).min(b.len());
    let Some(close) = memchr::memmem::find(&b[label_start..lim], b"-----") else {
        return label_start;
    };
    let label = &b[label_start..label_start + close];
    let header_end = label_start + close + 5;
    if !(label.ends_with(b"PRIVATE KEY") || label.ends_with(b"PRIVATE KEY BLOCK")) {
        return header_end;
    }
    let mut end_marker = Vec::with_capacity(label.len() + 14);
    end_marker.extend_from_slice(b"-----END ");
    end_marker.extend_from_slice(label);
    end_marker.extend_from_slice(b"-----");
    // One search per label and value: a repeated BEGIN without END must
    // not rescan the rest of the value each time.
    let found = match &cx.pem_end_cache {
        Some((cached_label, pos))
            if cached_label[..] == *label && pos.is_none_or(|p| p >= header_end) =>
        {
            *pos
        }
        _ => {
            let pos =
                memchr::memmem::find(&b[header_end..], &end_marker).map(|off| header_end + off);
            cx.pem_end_cache = Some((label.to_vec(), pos));
            pos
        }
    };
    let end = match found {
        Some(at) => at + end_marker.len(),
        None => {
            // Truncated block: take the body that follows.
            let mut e = header_end;
            while e < b.len()
                && (b64(b[e]) || matches!(b[e], b'\r' | b'\n' | b'\\' | b' ' | b':' | b'-' | b','))
            {
                e += 1;
            }
            while e > header_end && !b64(b[e - 1]) {
                e -= 1;
            }
            e.max(header_end)
        }
    };
    cx.push(PRIVATE_KEY, i, end, 0.99, "pem_private_key");
    end
}

/// Azure AD client secrets: `xxx8Q~` followed by 31–34 characters.
pub(crate) fn tilde(cx: &mut Cx<'_>, i: usize) -> usize {
    let b = cx.b;
    if i < 5 || b[i - 1] != b'Q' || !b[i - 2].is_ascii_digit() {
        return i + 1;
    }
    let ok = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'~' | b'.');
    let s = i - 5;
    if !b[s..i - 2].iter().all(|&c| ok(c)) {
        return i + 1;
    }
    let delim = |c: u8| {
        c.is_ascii_whitespace()
            || matches!(
                c,
                b'\\' | b'\'' | b'"' | b'`' | b'>' | b'=' | b':' | b'(' | b',' | b')' | b'<'
            )
    };
    if s > 0 && !delim(b[s - 1]) {
        return i + 1;
    }
    let mut e = i + 1;
    while e < b.len() && (ok(b[e]) || b[e] == b'-') && e - i <= 35 {
        e += 1;
    }
    let len = e - i - 1;
    if (31..=34).contains(&len) && (e == b.len() || delim(b[e])) {
        cx.push(K, s, e, 0.85, "azure_ad_client_secret");
        return e;
    }
    i + 1
}
