//! The action table: what happens to each type at each trust level.

use agentfed_guest::pii::{PiiAction, TrustLevel};

use crate::finding::types;

/// How strongly an action protects the data, for overlap resolution and
/// floors: pass 0 < hash 1 < redact 2 < block 3. Redact ranks above hash
/// because a hash still lets equal values be correlated.
pub fn severity(action: PiiAction) -> u8 {
    match action {
        PiiAction::Pass => 0,
        PiiAction::Hash => 1,
        PiiAction::Redact => 2,
        PiiAction::Block => 3,
    }
}

/// Parses `pass`, `redact`, `hash` or `block` (surrounding whitespace and
/// ASCII case ignored).
pub fn parse_action(s: &str) -> Option<PiiAction> {
    let s = s.trim();
    [
        ("pass", PiiAction::Pass),
        ("redact", PiiAction::Redact),
        ("hash", PiiAction::Hash),
        ("block", PiiAction::Block),
    ]
    .into_iter()
    .find(|(name, _)| s.eq_ignore_ascii_case(name))
    .map(|(_, a)| a)
}

/// The lowercase name of an action, as accepted by [`parse_action`].
pub fn action_name(action: PiiAction) -> &'static str {
    match action {
        PiiAction::Pass => "pass",
        PiiAction::Redact => "redact",
        PiiAction::Hash => "hash",
        PiiAction::Block => "block",
    }
}

/// The lowercase name of a trust level as used in override keys
/// (`untrusted`, `verified`, `attested`, `trusted`, `privileged`).
pub fn level_name(level: TrustLevel) -> &'static str {
    match level {
        TrustLevel::Untrusted => "untrusted",
        TrustLevel::Verified => "verified",
        TrustLevel::Attested => "attested",
        TrustLevel::Trusted => "trusted",
        TrustLevel::Privileged => "privileged",
    }
}

#[derive(Debug, Clone)]
struct Row {
    pii_type: &'static str,
    actions: [PiiAction; 5],
    floor: PiiAction,
}

/// Actions per type and trust level (UNTRUSTED … PRIVILEGED).
///
/// [`ActionTable::default`] is agentfed's default table (see the crate
/// docs). A type that is not in the table is blocked at every level, so a
/// detector whose type was forgotten fails closed.
#[derive(Debug, Clone)]
pub struct ActionTable {
    rows: Vec<Row>,
}

impl Default for ActionTable {
    fn default() -> Self {
        use PiiAction::{Block as B, Hash as H, Pass as P, Redact as R};
        let mut t = ActionTable::empty();
        for ty in [
            types::SSN,
            types::CREDIT_CARD,
            types::PASSWORD,
            types::AWS_KEY,
            types::PRIVATE_KEY,
        ] {
            t.set(ty, [B, B, B, B, B]);
        }
        for ty in [
            types::API_KEY,
            types::JWT,
            types::DATABASE_URL,
            types::GITHUB_TOKEN,
        ] {
            t.set(ty, [B, B, B, B, R]);
        }
        for ty in [types::EMAIL, types::PHONE] {
            t.set(ty, [B, B, R, H, P]);
        }
        t.set(types::IP_ADDRESS, [B, B, H, H, P]);
        for ty in [types::NAME, types::ADDRESS] {
            t.set(ty, [B, B, R, R, P]);
        }
        t
    }
}

impl ActionTable {
    /// A table with no types (everything it is asked about is blocked).
    pub fn empty() -> Self {
        ActionTable { rows: Vec::new() }
    }

    fn row_mut(&mut self, pii_type: &'static str) -> &mut Row {
        if let Some(i) = self.rows.iter().position(|r| r.pii_type == pii_type) {
            return &mut self.rows[i];
        }
        self.rows.push(Row {
            pii_type,
            actions: [PiiAction::Block; 5],
            floor: PiiAction::Pass,
        });
        self.rows.last_mut().expect("just pushed")
    }

    /// Sets the actions of `pii_type` for the five levels, lowest first,
    /// adding the type if needed. Actions below the type's floor are
    /// raised to it.
    pub fn set(&mut self, pii_type: &'static str, actions: [PiiAction; 5]) -> &mut Self {
        let row = self.row_mut(pii_type);
        row.actions = actions.map(|a| max_action(a, row.floor));
        self
    }

    /// Sets the action of `pii_type` at one level (raised to the floor).
    pub fn set_level(
        &mut self,
        pii_type: &'static str,
        level: TrustLevel,
        action: PiiAction,
    ) -> &mut Self {
        let row = self.row_mut(pii_type);
        row.actions[level.rank() as usize] = max_action(action, row.floor);
        self
    }

    /// Sets the weakest action `pii_type` may ever get: current actions
    /// below it are raised, and an operator override below it is an error.
    pub fn set_floor(&mut self, pii_type: &'static str, floor: PiiAction) -> &mut Self {
        let row = self.row_mut(pii_type);
        row.floor = floor;
        row.actions = row.actions.map(|a| max_action(a, floor));
        self
    }

    /// The action for `pii_type` at `level`; `block` for unknown types.
    pub fn action(&self, pii_type: &str, level: TrustLevel) -> PiiAction {
        // Types are usually the same `&'static str` constants: compare
        // addresses first, contents only when that fails.
        let by_ptr = self.rows.iter().find(|r| {
            std::ptr::eq(r.pii_type.as_ptr(), pii_type.as_ptr())
                && r.pii_type.len() == pii_type.len()
        });
        by_ptr
            .or_else(|| self.rows.iter().find(|r| r.pii_type == pii_type))
            .map_or(PiiAction::Block, |r| r.actions[level.rank() as usize])
    }

    /// The five actions of `pii_type`, if it is in the table.
    pub fn row(&self, pii_type: &str) -> Option<[PiiAction; 5]> {
        self.rows
            .iter()
            .find(|r| r.pii_type == pii_type)
            .map(|r| r.actions)
    }

    /// The types in the table, in insertion order.
    pub fn types(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.rows.iter().map(|r| r.pii_type)
    }

    /// Applies operator overrides read through `config` (the host's
    /// `config` import in a plugin, a map in tests).
    ///
    /// For every type in the table, `action.<type>` sets all five levels
    /// and `action.<type>.<level>` (level in lowercase, e.g.
    /// `action.email.attested`) sets one level and wins over the former.
    /// Values are `pass`, `redact`, `hash` or `block`; anything else, or an
    /// action below the type's floor, is an error naming the key.
    pub fn apply_overrides(
        &mut self,
        config: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), String> {
        let names: Vec<&'static str> = self.types().collect();
        for ty in names {
            let key = format!("action.{ty}");
            if let Some(raw) = config(&key) {
                let action = self.checked(ty, &key, &raw)?;
                self.set(ty, [action; 5]);
            }
            for level in TrustLevel::ALL {
                let key = format!("action.{ty}.{}", level_name(level));
                if let Some(raw) = config(&key) {
                    let action = self.checked(ty, &key, &raw)?;
                    self.set_level(ty, level, action);
                }
            }
        }
        Ok(())
    }

    fn checked(&self, ty: &str, key: &str, raw: &str) -> Result<PiiAction, String> {
        let action = parse_action(raw).ok_or_else(|| {
            format!(
                "config key `{key}` has an invalid value (expected pass, redact, hash or block)"
            )
        })?;
        let floor = self
            .rows
            .iter()
            .find(|r| r.pii_type == ty)
            .map_or(PiiAction::Pass, |r| r.floor);
        if severity(action) < severity(floor) {
            return Err(format!(
                "config key `{key}` is below this policy's floor for {ty} ({})",
                action_name(floor)
            ));
        }
        Ok(action)
    }
}

fn max_action(a: PiiAction, b: PiiAction) -> PiiAction {
    if severity(a) >= severity(b) { a } else { b }
}
