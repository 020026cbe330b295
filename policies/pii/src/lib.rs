//! agentfed's default PII policy.
//!
//! Every payload passes this plugin before it is signed (outbound) and
//! after it is verified (inbound). The host hands over every string value
//! of the JSON payload with its RFC 6901 JSON Pointer; the policy finds
//! personal data and secrets, chooses an action per finding from the
//! peer's trust level, and returns the detections, the rewritten values
//! and whether the message is blocked.
//!
//! The crate is also a library: the detection engine ([`Scanner`],
//! [`detect`]), the action table ([`ActionTable`]), overlap resolution
//! ([`resolve`]) and rewriting ([`apply`]) are host-independent (the keyed
//! hash and the configuration come in as closures), so they run in native
//! tests and other plugins can extend them. Depend on it with
//! `default-features = false` to leave out the component export (feature
//! `export`, on by default) and export your own [`PiiPolicy`]; see
//! `examples/hipaa-pii`. (Cargo then also re-emits this crate's
//! `agentfed_policy_pii.wasm`, without the export, into the dependent's
//! target directory: build the default policy in its own target directory
//! or after its dependents.)
//!
//! # Categories
//!
//! Every finding is reported under one of 14 canonical types
//! ([`types::ALL`]), so the action table is complete and auditable:
//!
//! | type | what is detected |
//! |---|---|
//! | `email` | addresses anchored on `@`: dot-atom local part, ≥ 2 DNS labels, alphabetic TLD (`icon@2x.png` excluded) |
//! | `ssn` | US SSN `123-45-6789` (also space/dot separated) with the SSA rules: area ≠ 000, 666, 9xx; group ≠ 00; serial ≠ 0000; not one digit repeated; bare 9 digits only next to a context word (`SSN`, `social security`) or in an `ssn` field. **Also**: US ITIN (area 9xx, group 50–65/70–88/90–92/94–99), UK National Insurance number (prefix rules), UK NHS number (mod 11, in context), Spanish DNI/NIF and NIE (mod-23 letter), Italian codice fiscale (check character, omocodia), Singapore NRIC/FIN (check letter), Indian Aadhaar (Verhoeff, in context) and PAN (in context), Australian TFN and ABN (checksums, in context), Polish PESEL (checksum, in context), US passport numbers (in context) |
//! | `credit_card` | 13–19 digits, compact or grouped (`4-4-4-4`, Amex `4-6-5`, Diners `4-6-4`), with a Luhn checksum **and** a known network prefix/length (Visa, Mastercard incl. 2-series, Amex, Discover, Diners, JCB, UnionPay, Maestro, Mir, RuPay, Troy). **Also**: IBAN (registry length per country, mod 97, compact or in groups of four), ABA routing numbers (3-7-1 checksum, in context), bank account numbers (8–17 digits next to `account number`/`acct`/…) |
//! | `api_key` | `sk-…` and `key-…` keys (entropy-gated), ~90 provider formats after gitleaks (OpenAI `sk-proj-`/`sk-svcacct-`/`sk-admin-`, Anthropic `sk-ant-`, Google `AIza…`/`GOCSPX-`/`ya29.`, Slack `xox[abprse]-`/`xapp-`/webhooks, Stripe `sk_live_`/`rk_live_`/`whsec_`, GitLab `glpat-` and friends, npm `npm_`, PyPI `pypi-AgEIcHlwaS5vcmc…`, Hugging Face `hf_`, Twilio `SK…`, SendGrid `SG.…`, DigitalOcean `dop_v1_`, Azure storage `AccountKey=` and AD client secrets `…8Q~…`, Discord bot tokens and webhooks, Telegram bot tokens, Shopify, Atlassian, Databricks, Postman, Linear, Notion, Doppler, Grafana, Vault, Pulumi, Sentry, New Relic, Alibaba, Mapbox, Dropbox, Figma, Supabase, Heroku, PlanetScale, 1Password, Docker Hub, RubyGems, NuGet, Groq, xAI, Replicate, Perplexity, Tavily, Pinecone, LangSmith, ElevenLabs, …), keyword assignments with a random-looking value (`api_key = "…"`, `client_secret: …`, `token=…`), `Bearer <token>`, provider-keyword assignments (Heroku, Datadog, Discord, Okta, Cloudflare, Algolia, Mailchimp, Twilio, …) |
//! | `password` | assignments `password=…`, `pwd: …`, `"passwd": "…"`, `DB_PASSWORD=…`, `dbPassword: …` (placeholders, masks, `${VAR}` and prose such as "password: click here" excluded); the password part of credentials in a URL (`https://user:pw@host`); HTTP `Basic` credentials; PlanetScale `pscale_pw_` |
//! | `name` | a title (`Mr`, `Mrs`, `Ms`, `Mx`, `Dr`, `Prof`, `Professor`, with or without a period) followed by capitalised names or initials, Unicode letters included (`Dr. Zoë Müller-Lüdenscheidt`); the span covers the title |
//! | `address` | house number (optionally with a letter) + capitalised or ordinal street words + a street suffix (Street/St, Avenue/Ave, Road/Rd, Boulevard/Blvd, Lane/Ln, Drive/Dr, Court, Place, Terrace, Parkway, Highway, Circle, Trail, Way, Square, …), plus an optional post-directional, unit (`Apt 4B`, `Suite 200`, `#12`) and `, City, ST 12345` |
//! | `phone` | NANP `555-123-4567`, `(555) 123-4567`, `+1 555 123 4567`, `555.123.4567`; international `+44 20 7946 0958`; other digit groupings of 7–15 digits only next to a context word (`phone`, `tel`, `mobile`, …) or in a phone field |
//! | `ip_address` | IPv4 (four octets 0–255, no leading zeros) and IPv6 (every RFC 4291 form via `std::net::Ipv6Addr`, with plausibility rules so `a::b` or times never match) |
//! | `jwt` | `eyJ…` with two or four dots whose header decodes to JSON with `alg`/`typ`/`enc` |
//! | `aws_key` | access key ids `AKIA`/`ASIA`/`ABIA`/`ACCA`/`A3T…` + 16 characters; 40-character secret access keys assigned to `aws_secret_access_key` and similar names |
//! | `private_key` | PEM `-----BEGIN … PRIVATE KEY-----` (RSA, EC, DSA, OPENSSH, ENCRYPTED, PGP `… PRIVATE KEY BLOCK`) through the matching END line (or to the end of the body when truncated; JSON-escaped `\n` included, so GCP service-account keys match); age `AGE-SECRET-KEY-1…`; PuTTY key files; `private_key = …` assignments |
//! | `database_url` | `postgres(ql)://`, `mysql://`, `mariadb://`, `mongodb(+srv)://`, `redis(s)://`, `amqp(s)://`, `mssql://`, `sqlserver://`, `clickhouse://`, `neo4j://`, `jdbc:…://` and other database schemes **with credentials** (`user:pw@`, or `password=` in the query/options) |
//! | `github_token` | `ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_` + 36 characters, `github_pat_…` |
//!
//! Mapping of the extra rules: generic and provider secrets → `api_key`;
//! GitHub tokens → `github_token`; ITIN and other national identity
//! numbers → `ssn`; IBAN, routing and bank account numbers →
//! `credit_card` (financial accounts, blocked everywhere); URL and HTTP
//! Basic credentials → `password`; non-PEM private keys → `private_key`.
//!
//! **Secret-named fields.** When the last JSON Pointer segment names a
//! secret (case, `-` and `_` ignored: `password`, `passwd`, `pwd`,
//! `passphrase`, `new_password`, `password_confirmation`, `secret`,
//! `client_secret`, `api_key`, `apikey`, `x-api-key`, `access_token`,
//! `auth_token`, `token`, `authorization`, `credentials`, `private_key`,
//! `aws_secret_access_key`, …) the whole non-empty value is a finding with
//! confidence 0.9: `password` for password-like names, `private_key` for
//! private-key names, `aws_key` for AWS secret names, `api_key` otherwise.
//! Counters and cursors (`max_tokens`, `next_token`, `eos_token`), hints
//! and policies (`password_hint`) and placeholder values (`null`, `***`,
//! `${VAR}`, `[REDACTED:…]`) are not. See [`secret_field_type`].
//!
//! **False alarms.** Version numbers (`1.2.3`, `v2.10.4`, and `1.2.3.4`
//! after `v`/`version`/`release`/`build`/`==`/`@`, or followed by
//! `-beta`), decimals, prices, dates and timestamps, UUIDs, hex hashes, git
//! SHAs, order numbers and digit runs that fail their validator produce no
//! finding. A bare dotted quad of single digits (`1.2.3.4`) with no version
//! context is still reported as an IP address, with confidence 0.5.
//! Findings inside `[REDACTED:…]`/`[HASH:…]` markers are dropped, so a
//! rewritten payload scans clean on the receiving side.
//!
//! # Actions
//!
//! The default table ([`ActionTable::default`]), the same for both
//! directions:
//!
//! | type | UNTRUSTED | VERIFIED | ATTESTED | TRUSTED | PRIVILEGED |
//! |---|---|---|---|---|---|
//! | ssn, credit_card, password, aws_key, private_key | block | block | block | block | block |
//! | api_key, jwt, database_url, github_token | block | block | block | block | redact |
//! | email, phone | block | block | redact | hash | pass |
//! | ip_address | block | block | hash | hash | pass |
//! | name, address | block | block | redact | redact | pass |
//!
//! `redact` replaces the span with `[REDACTED:<type>]`; `hash` with
//! `[HASH:<type>:<h>]`, `<h>` being the host's keyed hash of the span
//! (HMAC with a per-node key, never a prefix of the value); `pass` leaves
//! it; any `block` blocks the message. A type missing from the table is
//! blocked. When a message is blocked, `rewritten` is empty: nothing is
//! sent, and no hash is computed.
//!
//! **Overlaps** are resolved deterministically (see [`resolve`]): the more
//! protective action wins, then the longer span, then the earlier start.
//! Reported detections never overlap.
//!
//! # Operator overrides
//!
//! Through the host's `config` import (`[plugins.pii.config]`):
//!
//! * `action.<type>.<level>` = `pass|redact|hash|block`, level in
//!   lowercase (`action.email.attested = "hash"`);
//! * `action.<type>` = one action for all five levels (a per-level key
//!   wins over it);
//! * `min_confidence` = a number in [0, 1]: findings below it are ignored
//!   (default 0: everything found counts).
//!
//! An invalid value is an `Err` on every scan, which the host treats as a
//! blocked message (fail closed). Overrides are read once per plugin
//! instance and cached; with none set a scan costs nothing extra. Keys for
//! types that do not exist are never read (the import cannot enumerate
//! keys), so a misspelt type is silently ignored.
//!
//! # Confidence
//!
//! `confidence` says how sure the detector is, not how bad the data is:
//! 0.95–0.99 for exact provider formats, PEM headers and validated IBANs
//! and grouped card numbers; 0.85–0.9 for checksummed or strongly shaped
//! values (SSN with dashes, e-mail, NANP phone with a valid area code,
//! IPv4, secret-named fields); 0.7–0.8 for generic keys gated by entropy,
//! password assignments and titled names with one word; 0.5–0.6 for weak
//! shapes that needed context (bare 9-digit SSN, bank account numbers) and
//! single-digit dotted quads. It does not change the action unless the
//! operator sets `min_confidence`.
//!
//! # Performance
//!
//! No regular expressions: each value is scanned once, byte by byte, and
//! only anchors (a token start, `@`, `:`, `-`, `[`, `~`) dispatch to
//! hand-written detectors. Token starts are matched against provider
//! prefixes and keywords through first-byte tables — the keyword prefilter
//! gitleaks uses, without a separate pass — and digit runs are parsed once
//! into groups that every numeric validator shares. Nothing is compiled
//! at start-up. See `benches/scan.rs`.
#![deny(missing_docs)]

use std::cell::RefCell;
use std::sync::OnceLock;

use agentfed_guest::pii::{
    Detection, PiiPolicy, PiiType, RewrittenValue, ScanRequest, ScanResult, TrustLevel,
};

mod actions;
mod fields;
mod finding;
mod net;
mod numeric;
mod resolve;
mod scanner;
mod secrets;
pub mod validate;
mod words;

pub use actions::{ActionTable, action_name, level_name, parse_action, severity};
pub use agentfed_guest::pii::PiiAction;
pub use fields::secret_field_type;
pub use finding::{Detector, Finding, types};
pub use resolve::{Decision, apply, resolve};
pub use scanner::{Scanner, detect};

/// A complete PII policy: a [`Scanner`], an [`ActionTable`] and a
/// confidence threshold.
#[derive(Debug)]
pub struct Policy {
    scanner: Scanner,
    table: ActionTable,
    min_confidence: f32,
}

impl Default for Policy {
    /// agentfed's default policy: every built-in detector and the default
    /// action table.
    fn default() -> Self {
        Policy::new(Scanner::new(), ActionTable::default())
    }
}

impl Policy {
    /// A policy from its parts (minimum confidence 0).
    pub fn new(scanner: Scanner, table: ActionTable) -> Self {
        Policy {
            scanner,
            table,
            min_confidence: 0.0,
        }
    }

    /// The detection engine.
    pub fn scanner(&self) -> &Scanner {
        &self.scanner
    }

    /// The action table.
    pub fn table(&self) -> &ActionTable {
        &self.table
    }

    /// The action table, to change it.
    pub fn table_mut(&mut self) -> &mut ActionTable {
        &mut self.table
    }

    /// Findings below this confidence are ignored.
    pub fn min_confidence(&self) -> f32 {
        self.min_confidence
    }

    /// Sets the confidence threshold (clamped to [0, 1]).
    pub fn set_min_confidence(&mut self, min: f32) {
        self.min_confidence = if min.is_nan() {
            0.0
        } else {
            min.clamp(0.0, 1.0)
        };
    }

    /// Applies operator configuration read through `config`: action
    /// overrides (see [`ActionTable::apply_overrides`]) and
    /// `min_confidence`. Errors name the offending key.
    pub fn configure(&mut self, config: &dyn Fn(&str) -> Option<String>) -> Result<(), String> {
        self.table.apply_overrides(config)?;
        if let Some(raw) = config("min_confidence") {
            let v: f32 = raw
                .trim()
                .parse()
                .ok()
                .filter(|v: &f32| (0.0..=1.0).contains(v))
                .ok_or("config key `min_confidence` must be a number between 0 and 1")?;
            self.min_confidence = v;
        }
        Ok(())
    }

    /// The resolved, non-overlapping decisions for one value at `level`.
    pub fn decide(&self, path: &str, value: &str, level: TrustLevel) -> Vec<Decision> {
        let mut findings = Vec::new();
        self.scanner.detect_into(path, value, &mut findings);
        let mut out = Vec::new();
        resolve::resolve_into(
            &findings,
            &self.table,
            level,
            self.min_confidence,
            &mut Vec::new(),
            &mut out,
        );
        out
    }

    /// Scans one message: detections for every value, rewrites for the
    /// values that changed (none when blocked), and whether it is blocked.
    /// `hash` computes the keyed hash of a span (the host's `keyed-hash`
    /// import in a plugin).
    pub fn scan(
        &self,
        request: &ScanRequest,
        hash: &mut dyn FnMut(&str) -> String,
    ) -> Result<ScanResult, String> {
        thread_local! {
            static SCRATCH: RefCell<Scratch> = RefCell::default();
        }
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut scratch) => self.scan_with(request, hash, &mut scratch),
            // Re-entered from `hash`: use fresh buffers.
            Err(_) => self.scan_with(request, hash, &mut Scratch::default()),
        })
    }

    fn scan_with(
        &self,
        request: &ScanRequest,
        hash: &mut dyn FnMut(&str) -> String,
        sc: &mut Scratch,
    ) -> Result<ScanResult, String> {
        let level = request.peer_level;
        sc.decided.clear();
        let mut blocked = false;
        let mut rewrites_needed = false;
        for (idx, sv) in request.values.iter().enumerate() {
            if sv.value.len() > u32::MAX as usize {
                return Err("a string value is too large to scan".into());
            }
            let idx = u32::try_from(idx).map_err(|_| "too many values to scan")?;
            sc.findings.clear();
            self.scanner
                .detect_into(&sv.path, &sv.value, &mut sc.findings);
            if sc.findings.is_empty() {
                continue;
            }
            sc.value.clear();
            resolve::resolve_into(
                &sc.findings,
                &self.table,
                level,
                self.min_confidence,
                &mut sc.cands,
                &mut sc.value,
            );
            for d in &sc.value {
                match d.action {
                    PiiAction::Block => blocked = true,
                    PiiAction::Redact | PiiAction::Hash => rewrites_needed = true,
                    PiiAction::Pass => {}
                }
                sc.decided.push((idx, *d));
            }
        }
        let detections = sc
            .decided
            .iter()
            .map(|(idx, d)| Detection {
                value_index: *idx,
                pii_type: PiiType::from_name(d.finding.pii_type),
                start: d.finding.start as u32,
                end: d.finding.end as u32,
                confidence: d.finding.confidence,
                action: d.action,
            })
            .collect();
        let mut rewritten = Vec::new();
        if !blocked && rewrites_needed {
            let decided = &sc.decided;
            let mut i = 0;
            while i < decided.len() {
                let idx = decided[i].0;
                let mut j = i;
                sc.value.clear();
                while j < decided.len() && decided[j].0 == idx {
                    sc.value.push(decided[j].1);
                    j += 1;
                }
                let value = &request.values[idx as usize].value;
                if let Some(new) = apply(value, &sc.value, hash)? {
                    rewritten.push(RewrittenValue {
                        value_index: idx,
                        value: new,
                    });
                }
                i = j;
            }
        }
        Ok(ScanResult {
            detections,
            rewritten,
            blocked,
        })
    }
}

/// Buffers reused across scans (one set per thread).
#[derive(Default)]
struct Scratch {
    findings: Vec<Finding>,
    cands: Vec<Decision>,
    value: Vec<Decision>,
    decided: Vec<(u32, Decision)>,
}

/// Runs `request` through the policy in `cell`, building it with `build`
/// and configuring it from the host's `config` import on first use (once
/// per plugin instance), and hashing with the host's `keyed-hash`. A
/// configuration error is returned on every call.
///
/// This is the glue a [`PiiPolicy`] implementation needs; it calls host
/// imports, so it only works inside a component.
pub fn scan_with_host(
    cell: &'static OnceLock<Result<Policy, String>>,
    build: fn() -> Policy,
    request: ScanRequest,
) -> Result<ScanResult, String> {
    let policy = cell.get_or_init(|| {
        let mut policy = build();
        policy
            .configure(&|key| agentfed_guest::host::config(key))
            .map(|()| policy)
    });
    let policy = policy.as_ref().map_err(Clone::clone)?;
    policy.scan(&request, &mut |span| agentfed_guest::host::keyed_hash(span))
}

/// agentfed's default PII policy as a plugin ([`Policy::default`] plus
/// operator overrides).
pub struct DefaultPiiPolicy;

impl PiiPolicy for DefaultPiiPolicy {
    const DESCRIPTION: &'static str =
        "default PII policy: 14 categories, validated detectors, actions by trust level";

    fn scan(request: ScanRequest) -> Result<ScanResult, String> {
        static POLICY: OnceLock<Result<Policy, String>> = OnceLock::new();
        scan_with_host(&POLICY, Policy::default, request)
    }
}

#[cfg(feature = "export")]
agentfed_guest::export_pii_policy!(DefaultPiiPolicy);
