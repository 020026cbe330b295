//! Sessions: admission of a handshake partner (known, unknown, refused and
//! why), manifest updates of known peers, and session bookkeeping the
//! federation layer reports.

use super::*;

/// Why a handshake partner is refused a session (constant codes, sent to
/// the peer in the handshake's `REJECT`).
pub const ADMIT_SELF: &str = "SELF_CONNECTION";
/// A known node id presented another Ed25519 key than the one on record.
pub const ADMIT_KEY_MISMATCH: &str = "KEY_MISMATCH";
/// An operator removed this peer; only an operator's `peers add` or `join`
/// brings it back.
pub const ADMIT_REMOVED: &str = "PEER_REMOVED";
/// `accept_new_peers` admitted as many strangers as it may
/// (`[transport] max_accepted_peers`).
pub const ADMIT_PEER_LIMIT: &str = "PEER_LIMIT";

/// Whether a peer that completed a handshake may have a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A known peer in good standing.
    Known,
    /// Not known yet (admitted only by an explicit join or
    /// `accept_new_peers`).
    Unknown,
    /// Refused with a constant code (`PEER_SUSPENDED`, `PEER_EVICTED`,
    /// `UNTRUSTED`, [`ADMIT_KEY_MISMATCH`], [`ADMIT_SELF`]).
    Refused(&'static str),
}

impl Coordinator {
    // ---- sessions (the federation layer calls these) ----

    /// Decides whether the node behind `manifest` (already verified by the
    /// transport) may hold a session: suspended, evicted and UNTRUSTED
    /// peers are refused, and a known node id must present the key on
    /// record. A store read only; cheap enough for the handshake path.
    pub fn admit(&self, manifest: &SignedManifest) -> Result<Admission> {
        match self.admit_for_join(manifest)? {
            Admission::Unknown if self.store.removed_at(&manifest.manifest.node_id)?.is_some() => {
                Ok(Admission::Refused(ADMIT_REMOVED))
            }
            other => Ok(other),
        }
    }

    /// [`Coordinator::admit`] for an operator's explicit `join`, which may
    /// bring back a peer an operator removed.
    pub fn admit_for_join(&self, manifest: &SignedManifest) -> Result<Admission> {
        // Evidence still pending in memory (e.g. a threat a second ago) is
        // applied first, so this step-7 verdict is the one
        // `peer_connected` reaches after SESSION: a policy refusal is a
        // REJECT, never a close right after the session was granted.
        drop(self.lock_decisions());
        let node_id = manifest.manifest.node_id.as_str();
        if node_id == self.node_id() {
            return Ok(Admission::Refused(ADMIT_SELF));
        }
        let Some(record) = self.store.get_peer(node_id)? else {
            return Ok(Admission::Unknown);
        };
        Ok(admission_of(&record, manifest))
    }

    /// Adopts `manifest` for a known peer after this node dialed the
    /// manifest's endpoint and the peer's stored certificate answered
    /// there with this manifest: the endpoint is proven, as over any
    /// session this node dials.
    pub fn adopt_manifest_proven_at_endpoint(&self, manifest: &SignedManifest) -> Result<()> {
        manifest.verify()?;
        let _guard = self.lock_decisions();
        let node_id = manifest.manifest.node_id.as_str();
        let Some(known) = self.store.get_peer(node_id)? else {
            return Err(CoordError::UnknownPeer(clip(node_id)));
        };
        if known.manifest.manifest.public_key != manifest.manifest.public_key {
            return Err(CoordError::InvalidInput(
                "the manifest is signed by another key than the one on record".into(),
            ));
        }
        self.note_presented_manifest(Some(&known), manifest, "client", self.now())
    }

    /// After a completed handshake with a known peer: notes that it was
    /// seen, and adopts the manifest it just proved its key with when it
    /// differs from the stored one (a node that moved, or changed what it
    /// offers, is redialed at its new endpoint from then on), with a
    /// `peer_manifest_updated` record in the same commit. A manifest
    /// naming another TLS certificate is adopted only when this node
    /// dialed (`role` "client") and so saw that certificate; over an
    /// inbound session the certificate is not shown, and the pin stays
    /// an operator's decision (`join --fingerprint`).
    pub(super) fn note_presented_manifest(
        &self,
        known: Option<&PeerRecord>,
        presented: &SignedManifest,
        role: &str,
        now: u64,
    ) -> Result<()> {
        let node_id = presented.manifest.node_id.clone();
        let Some(stored) = known
            .map(|r| &r.manifest)
            .filter(|m| manifest_changed(m, presented))
        else {
            self.store
                .update_peer(&node_id, move |r| r.last_seen_ms = now)?;
            return Ok(());
        };
        let new_certificate = stored.manifest.tls_fingerprint != presented.manifest.tls_fingerprint;
        // A peer that stopped listening (no endpoint) aims this node's
        // dials nowhere, so that change needs no proof.
        let new_endpoint = stored.manifest.endpoint != presented.manifest.endpoint
            && presented.manifest.endpoint.is_some();
        if new_endpoint && !new_certificate && role != "client" {
            // Where this node dials is not moved by what a peer says over
            // a session it opened: the federation layer dials the new
            // endpoint and adopts the manifest only if the same
            // certificate answers there
            // ([`Coordinator::adopt_manifest_proven_at_endpoint`]).
            self.store
                .update_peer(&node_id, move |r| r.last_seen_ms = now)?;
            return self.record(
                AuditEvent::new(
                    EventType::PeerManifestUpdated,
                    format!(
                        "{node_id} presented a manifest naming a new endpoint over an inbound session; kept the stored one until the new endpoint proves the same identity"
                    ),
                )
                .with_peer(&node_id)
                .with_severity(crate::audit::Severity::Warning)
                .with_details(json!({
                    "adopted": false,
                    "endpoint": presented.manifest.endpoint,
                    "stored_endpoint": stored.manifest.endpoint,
                })),
            );
        }
        if new_certificate && role != "client" {
            self.store
                .update_peer(&node_id, move |r| r.last_seen_ms = now)?;
            return self.record(
                AuditEvent::new(
                    EventType::PeerManifestUpdated,
                    format!(
                        "{node_id} presented a manifest naming another TLS certificate over an inbound session; kept the stored one (join it with --fingerprint to accept the new one)"
                    ),
                )
                .with_peer(&node_id)
                .with_severity(crate::audit::Severity::Warning)
                .with_details(json!({
                    "adopted": false,
                    "tls_fingerprint": presented.manifest.tls_fingerprint,
                    "stored_tls_fingerprint": stored.manifest.tls_fingerprint,
                    "endpoint": presented.manifest.endpoint,
                })),
            );
        }
        let event = manifest_update_event(&stored.manifest, &presented.manifest);
        let adopted = presented.clone();
        self.store.update_peer_recorded(
            self.audit.recorder(),
            &node_id,
            move |r| {
                r.last_seen_ms = now;
                r.manifest = adopted.clone();
            },
            vec![event],
        )?;
        Ok(())
    }

    /// Records a completed handshake: an unknown peer is added as VERIFIED
    /// (its signed manifest verified, its key proven over this TLS
    /// session), then `handshake_completed` and `session_created` are
    /// audited. A peer refused by [`Coordinator::admit`] meanwhile (e.g.
    /// suspended while the handshake ran) gets the refusal code back and
    /// `handshake_rejected` is audited instead.
    pub fn peer_connected(
        &self,
        manifest: &SignedManifest,
        session_id: &str,
        role: &str,
        pin: &str,
    ) -> Result<std::result::Result<Admission, &'static str>> {
        manifest.verify()?;
        let node_id = manifest.manifest.node_id.clone();
        let _guard = self.lock_decisions();
        let known = if node_id == self.node_id() {
            None
        } else {
            self.store.get_peer(&node_id)?
        };
        let admission = match &known {
            _ if node_id == self.node_id() => Admission::Refused(ADMIT_SELF),
            Some(record) => admission_of(record, manifest),
            None => Admission::Unknown,
        };
        if let Admission::Refused(code) = admission {
            self.record(
                AuditEvent::new(
                    EventType::HandshakeRejected,
                    format!("session with {node_id} refused: {code}"),
                )
                .with_peer(&node_id)
                .with_details(json!({"reason": code, "session_id": session_id, "role": role})),
            )?;
            return Ok(Err(code));
        }
        let now = self.now();
        // The handshake policy checks the cap of strangers first; checked
        // again here, under the decision lock, so handshakes racing each
        // other cannot add up past it.
        if admission == Admission::Unknown
            && role != "client"
            && self.accepted_new_peers()? as u64 >= self.config.transport.max_accepted_peers
        {
            self.record(
                AuditEvent::new(
                    EventType::HandshakeRejected,
                    format!("session with {node_id} refused: {ADMIT_PEER_LIMIT}"),
                )
                .with_peer(&node_id)
                .with_details(
                    json!({"reason": ADMIT_PEER_LIMIT, "session_id": session_id, "role": role}),
                ),
            )?;
            return Ok(Err(ADMIT_PEER_LIMIT));
        }
        if admission == Admission::Unknown {
            let mut record = PeerRecord::new(manifest.clone(), now);
            record.trust_level = TrustLevel::Verified;
            // Dialed by this node (an operator's `join`), or a stranger
            // that connected under `accept_new_peers`.
            record.admitted = if role == "client" {
                PeerOrigin::Operator
            } else {
                PeerOrigin::AcceptNew
            };
            self.store.upsert_peer_recorded(
                self.audit.recorder(),
                &record,
                role == "client",
                vec![
                    AuditEvent::new(
                        EventType::PeerAdded,
                        format!("peer {node_id} added after a completed handshake"),
                    )
                    .with_peer(&node_id)
                    .with_actor(crate::audit::ACTOR_SYSTEM)
                    .with_details(json!({
                        "endpoint": record.manifest.manifest.endpoint,
                        "tls_fingerprint": record.manifest.manifest.tls_fingerprint,
                        "trust_level": record.trust_level,
                        "pin": pin,
                    })),
                ],
            )?;
            self.refresh_live_counts()?;
        } else {
            self.note_presented_manifest(known.as_ref(), manifest, role, now)?;
        }
        self.record(
            AuditEvent::new(
                EventType::HandshakeCompleted,
                format!("handshake with {node_id} completed ({role})"),
            )
            .with_peer(&node_id)
            .with_details(json!({"session_id": session_id, "role": role, "pin": pin})),
        )?;
        self.record(
            AuditEvent::new(
                EventType::SessionCreated,
                format!("session {session_id} with {node_id}"),
            )
            .with_peer(&node_id)
            .with_details(json!({"session_id": session_id, "role": role})),
        )?;
        Ok(Ok(admission))
    }
}

/// The `peer_manifest_updated` record of a known peer's manifest going
/// from `old` to `new`: which fields changed (the destructuring makes a
/// new manifest field a compile error here until it is listed), with the
/// old and new endpoint and certificate fingerprint.
pub(super) fn manifest_update_event(old: &Manifest, new: &Manifest) -> AuditEvent {
    let Manifest {
        node_id: _,
        public_key: _,
        endpoint,
        tls_fingerprint,
        agent_types,
        capabilities,
        protocol_version,
        wg_public_key,
        mesh_ip,
        wg_endpoint,
        timestamp_ms: _,
    } = new;
    let changed: Vec<&str> = [
        ("endpoint", *endpoint != old.endpoint),
        ("tls_fingerprint", *tls_fingerprint != old.tls_fingerprint),
        ("agent_types", *agent_types != old.agent_types),
        ("capabilities", *capabilities != old.capabilities),
        (
            "protocol_version",
            *protocol_version != old.protocol_version,
        ),
        ("wg_public_key", *wg_public_key != old.wg_public_key),
        ("mesh_ip", *mesh_ip != old.mesh_ip),
        ("wg_endpoint", *wg_endpoint != old.wg_endpoint),
    ]
    .into_iter()
    .filter_map(|(field, differs)| differs.then_some(field))
    .collect();
    AuditEvent::new(
        EventType::PeerManifestUpdated,
        format!(
            "{} presented an updated manifest ({})",
            new.node_id,
            changed.join(", ")
        ),
    )
    .with_peer(&new.node_id)
    .with_details(json!({
        "adopted": true,
        "changed": changed,
        "endpoint": endpoint,
        "previous_endpoint": old.endpoint,
        "tls_fingerprint": tls_fingerprint,
        "previous_tls_fingerprint": old.tls_fingerprint,
    }))
}

/// Whether `presented` says something other than `stored` (the signing
/// time aside: a node re-signs its manifest whenever its daemon starts).
pub(super) fn manifest_changed(stored: &SignedManifest, presented: &SignedManifest) -> bool {
    let mut presented = presented.manifest.clone();
    presented.timestamp_ms = stored.manifest.timestamp_ms;
    presented != stored.manifest
}

pub(super) fn admission_of(record: &PeerRecord, manifest: &SignedManifest) -> Admission {
    if record.manifest.manifest.public_key != manifest.manifest.public_key {
        return Admission::Refused(ADMIT_KEY_MISMATCH);
    }
    match record.breaker.state {
        BreakerState::Suspended => Admission::Refused(crate::transport::handshake::PEER_SUSPENDED),
        BreakerState::Evicted => Admission::Refused(crate::transport::handshake::PEER_EVICTED),
        BreakerState::Active if record.trust_level == TrustLevel::Untrusted => {
            Admission::Refused(crate::transport::handshake::UNTRUSTED)
        }
        BreakerState::Active => Admission::Known,
    }
}
