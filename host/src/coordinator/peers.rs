//! Peers: listing, adding (from a verified manifest) and removing them,
//! each with its `peer_added` / `peer_removed` record in the same commit.

use super::*;

impl Coordinator {
    // ---- peers ----

    /// Every known peer.
    pub fn peers(&self) -> Result<Vec<PeerView>> {
        drop(self.lock_decisions());
        let now = self.now();
        Ok(self
            .store
            .list_peers()?
            .iter()
            .map(|r| peer_view(r, now))
            .collect())
    }

    /// One peer.
    pub fn peer(&self, node_id: &str) -> Result<PeerView> {
        drop(self.lock_decisions());
        Ok(peer_view(&self.peer_record(node_id)?, self.now()))
    }

    /// The key that signs `node_id`'s delivery receipts, when its
    /// manifest on record announces a protocol version that signs them
    /// ([`crate::receipt::SIGNED_RECEIPTS_VERSION`]); `None` for an older
    /// peer, whose acknowledgements are unsigned (protocol §10.4). The
    /// manifest is signed by the peer, so the version cannot be lowered by
    /// anyone in between.
    pub fn receipt_key(&self, node_id: &str) -> Result<Option<String>> {
        let manifest = self.peer_record(node_id)?.manifest.manifest;
        Ok(
            (manifest.protocol_version >= crate::receipt::SIGNED_RECEIPTS_VERSION)
                .then_some(manifest.public_key),
        )
    }

    /// `node_id`'s Ed25519 key on record ("" when unknown).
    pub(super) fn peer_public_key(&self, node_id: &str) -> String {
        self.store
            .get_peer(node_id)
            .ok()
            .flatten()
            .map(|r| r.manifest.manifest.public_key)
            .unwrap_or_default()
    }

    pub(super) fn peer_record(&self, node_id: &str) -> Result<PeerRecord> {
        if let Some(record) = self.store.get_peer(node_id)? {
            return Ok(record);
        }
        // A typo gets a suggestion: the known id within two edits, if one.
        let closest = self
            .store
            .list_peers()?
            .into_iter()
            .map(|r| r.node_id().to_string())
            .map(|id| (edit_distance(node_id, &id), id))
            .filter(|(d, _)| *d <= 2)
            .min();
        Err(match closest {
            Some((_, known)) => CoordError::UnknownPeerDidYouMean {
                given: clip(node_id),
                known,
            },
            None => CoordError::UnknownPeer(clip(node_id)),
        })
    }

    /// Adds a peer out of band from its signed manifest (JSON): the
    /// signature and every field are verified; the peer starts VERIFIED.
    pub fn add_peer(&self, manifest_json: &str) -> Result<PeerView> {
        let manifest = SignedManifest::from_json(manifest_json.as_bytes())?;
        manifest.verify()?;
        let node_id = manifest.manifest.node_id.clone();
        if node_id == self.node_id() {
            return Err(CoordError::InvalidInput(
                "that is this node's own manifest".into(),
            ));
        }
        let _guard = self.lock_decisions();
        if self.store.get_peer(&node_id)?.is_some() {
            return Err(CoordError::PeerExists(node_id));
        }
        let now = self.now();
        let mut record = PeerRecord::new(manifest, now);
        record.trust_level = TrustLevel::Verified;
        // The operator's explicit decision lifts an earlier removal; the
        // peer and its record commit together.
        self.store.upsert_peer_recorded(
            self.audit.recorder(),
            &record,
            true,
            vec![
                AuditEvent::new(
                    EventType::PeerAdded,
                    format!("peer {node_id} added out of band"),
                )
                .with_peer(&node_id)
                .with_actor(crate::audit::ACTOR_OPERATOR)
                .with_details(json!({
                    "endpoint": record.manifest.manifest.endpoint,
                    "tls_fingerprint": record.manifest.manifest.tls_fingerprint,
                    "trust_level": record.trust_level,
                })),
            ],
        )?;
        self.refresh_live_counts()?;
        Ok(peer_view(&record, now))
    }

    /// Forgets a peer: its record, its spend samples and its queued
    /// outbox messages (dropped, with their ids in the `peer_removed`
    /// record). It goes on the removed list: its handshakes are refused
    /// (`PEER_REMOVED`) until an operator adds or joins it again.
    pub fn remove_peer(&self, node_id: &str) -> Result<()> {
        let _guard = self.lock_decisions();
        // The removal and its record (naming what was dropped) commit
        // together.
        let removed = self.store.remove_peer_recorded(
            self.audit.recorder(),
            node_id,
            self.now(),
            |removed| {
                let dropped = &removed.dropped_envelopes;
                AuditEvent::new(
                    EventType::PeerRemoved,
                    format!(
                        "peer {node_id} removed; {} queued message(s) dropped",
                        dropped.len()
                    ),
                )
                .with_peer(node_id)
                .with_actor(crate::audit::ACTOR_OPERATOR)
                .with_details(json!({
                    "outbox_dropped": dropped.len(),
                    "dropped_envelope_ids": dropped.iter().take(100).collect::<Vec<_>>(),
                }))
            },
        )?;
        if removed.is_none() {
            return Err(CoordError::UnknownPeer(clip(node_id)));
        }
        self.refresh_live_counts()
    }

    /// How many known peers were admitted by `accept_new_peers`.
    pub fn accepted_new_peers(&self) -> Result<usize> {
        Ok(self
            .store
            .list_peers()?
            .iter()
            .filter(|r| r.admitted == PeerOrigin::AcceptNew)
            .count())
    }

    /// Whether this node keeps a session with `node_id` on its own (redials
    /// it): only peers an operator added or joined. A stranger admitted by
    /// `accept_new_peers` is never a redial target, so strangers cannot aim
    /// this node's connections at hosts of their choosing.
    pub fn redials(&self, node_id: &str) -> Result<bool> {
        Ok(self
            .store
            .get_peer(node_id)?
            .is_some_and(|r| r.admitted == PeerOrigin::Operator))
    }

    /// Takes the decision lock; successes noted meanwhile are applied
    /// first, so every decision and read sees current counts.
    pub(super) fn lock_decisions(&self) -> std::sync::MutexGuard<'_, ()> {
        let guard = self.decisions.lock().unwrap_or_else(|p| p.into_inner());
        self.apply_pending_successes_locked();
        guard
    }
}
