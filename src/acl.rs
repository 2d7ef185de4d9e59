//! Access control: a pure decision from (peer, secret name) to allow or deny.
//!
//! Default deny. A request passes if any `[[allow]]` rule matches: every attribute the rule's
//! `peer` names must match the peer, and one of its `secrets` globs must match `{source}/{id}`.
//! Admin operations (flush, metrics) need a matching rule with `admin = true`. This module does no
//! I/O: user and group names were resolved to ids when the config was built, and the peer's
//! attributes were read by `peer`.

use std::path::PathBuf;

use crate::name::Glob;
use crate::peer::PeerIdentity;

/// What a rule requires of the peer. `None` means "any".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerMatch {
    /// Required uid (from `uid` or `user`).
    pub uid: Option<u32>,
    /// Required group (from `gid` or `group`): the primary or a supplementary group.
    pub gid: Option<u32>,
    /// Required executable: the file this path names when the caller connects.
    pub exe: Option<PathBuf>,
    /// Required system unit name.
    pub unit: Option<String>,
    /// Required unit inside a user manager (config requires `uid`/`user` beside it).
    pub user_unit: Option<String>,
}

impl PeerMatch {
    fn matches(&self, peer: &PeerIdentity) -> bool {
        self.uid.is_none_or(|uid| peer.uid == uid)
            && self
                .gid
                .is_none_or(|gid| peer.gid == gid || peer.groups.contains(&gid))
            // SECURITY: exe and the units are unknown on the peer when they could not be read from
            // the pinned process; a rule that names them then does not match. `exe` matches when
            // the rule's path named the caller's executable file at identification (`peer`).
            && self
                .exe
                .as_ref()
                .is_none_or(|exe| peer.exe_matches.contains(exe))
            && self
                .unit
                .as_ref()
                .is_none_or(|unit| peer.unit.as_ref() == Some(unit))
            && self
                .user_unit
                .as_ref()
                .is_none_or(|unit| peer.user_unit.as_ref() == Some(unit))
    }
}

/// One `[[allow]]` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Who.
    pub peer: PeerMatch,
    /// Which secrets.
    pub secrets: Vec<Glob>,
    /// May flush the cache and read metrics.
    pub admin: bool,
}

/// The outcome of an access check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Allowed by the rule at this index.
    Allow {
        /// Index into the rule list (for the audit line).
        rule: usize,
    },
    /// No rule matched.
    Deny,
}

impl Decision {
    /// Whether access was granted.
    pub fn allowed(self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

/// May `peer` read the secret `source/id`?
pub fn decide(rules: &[Rule], peer: &PeerIdentity, source: &str, id: &str) -> Decision {
    rules
        .iter()
        .position(|rule| {
            rule.peer.matches(peer) && rule.secrets.iter().any(|g| g.matches_parts(source, id))
        })
        .map_or(Decision::Deny, |rule| Decision::Allow { rule })
}

/// May the systemd unit `peer.unit` receive `source/id` through `LoadCredential=`?
///
/// SECURITY: the connecting process is PID 1 (uid 0) acting for the unit, so only rules that name
/// a `unit` take part: a rule for `uid = 0` alone must not hand every unit every secret.
pub fn decide_credential(rules: &[Rule], peer: &PeerIdentity, source: &str, id: &str) -> Decision {
    rules
        .iter()
        .position(|rule| {
            rule.peer.unit.is_some()
                && rule.peer.matches(peer)
                && rule.secrets.iter().any(|g| g.matches_parts(source, id))
        })
        .map_or(Decision::Deny, |rule| Decision::Allow { rule })
}

/// May `peer` use admin operations?
pub fn decide_admin(rules: &[Rule], peer: &PeerIdentity) -> Decision {
    rules
        .iter()
        .position(|rule| rule.admin && rule.peer.matches(peer))
        .map_or(Decision::Deny, |rule| Decision::Allow { rule })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(peer: PeerMatch, secrets: &[&str], admin: bool) -> Rule {
        Rule {
            peer,
            secrets: secrets.iter().map(|s| Glob::parse(s).unwrap()).collect(),
            admin,
        }
    }

    fn peer(
        uid: u32,
        gid: u32,
        groups: &[u32],
        exe: Option<&str>,
        unit: Option<&str>,
    ) -> PeerIdentity {
        PeerIdentity {
            uid,
            gid,
            groups: groups.to_vec(),
            pid: Some(42),
            exe: exe.map(PathBuf::from),
            exe_matches: exe.map(PathBuf::from).into_iter().collect(),
            unit: unit.map(str::to_owned),
            ..PeerIdentity::default()
        }
    }

    #[test]
    fn decide_table() {
        let rules = vec![
            rule(
                PeerMatch {
                    uid: Some(1000),
                    ..Default::default()
                },
                &["files/app/*", "files/shared-token"],
                false,
            ),
            rule(
                PeerMatch {
                    gid: Some(50),
                    ..Default::default()
                },
                &["files/group/*"],
                false,
            ),
            rule(
                PeerMatch {
                    exe: Some("/usr/bin/app".into()),
                    ..Default::default()
                },
                &["files/exe-only"],
                false,
            ),
            rule(
                PeerMatch {
                    unit: Some("web.service".into()),
                    uid: Some(33),
                    ..Default::default()
                },
                &["aws/web/*"],
                false,
            ),
            rule(
                PeerMatch {
                    uid: Some(0),
                    ..Default::default()
                },
                &[],
                true,
            ),
        ];
        let u1000 = peer(1000, 1000, &[], Some("/usr/bin/other"), None);
        let g50 = peer(2000, 2000, &[50], None, None);
        let app = peer(3000, 3000, &[], Some("/usr/bin/app"), None);
        let app_unknown_exe = peer(3000, 3000, &[], None, None);
        let web = peer(33, 33, &[], None, Some("web.service"));
        let web_wrong_uid = peer(34, 34, &[], None, Some("web.service"));
        let root = peer(0, 0, &[], None, None);
        let cases: &[(&PeerIdentity, &str, &str, Decision)] = &[
            (&u1000, "files", "app/db", Decision::Allow { rule: 0 }),
            (&u1000, "files", "shared-token", Decision::Allow { rule: 0 }),
            (&u1000, "files", "other", Decision::Deny),
            (&u1000, "aws", "app/db", Decision::Deny),
            (&g50, "files", "group/x", Decision::Allow { rule: 1 }),
            (&g50, "files", "app/db", Decision::Deny),
            (&app, "files", "exe-only", Decision::Allow { rule: 2 }),
            (&app_unknown_exe, "files", "exe-only", Decision::Deny),
            (&u1000, "files", "exe-only", Decision::Deny),
            (&web, "aws", "web/key", Decision::Allow { rule: 3 }),
            (&web_wrong_uid, "aws", "web/key", Decision::Deny),
            // The admin rule has no secrets: admin alone grants no reads.
            (&root, "files", "app/db", Decision::Deny),
        ];
        for (peer, source, id, want) in cases {
            assert_eq!(
                decide(&rules, peer, source, id),
                *want,
                "{peer:?} {source}/{id}"
            );
        }
        assert_eq!(decide_admin(&rules, &root), Decision::Allow { rule: 4 });
        assert_eq!(decide_admin(&rules, &u1000), Decision::Deny);
    }

    #[test]
    fn credentials_need_a_unit_rule() {
        let rules = vec![
            rule(
                PeerMatch {
                    uid: Some(0),
                    ..Default::default()
                },
                &["files/*"],
                false,
            ),
            rule(
                PeerMatch {
                    unit: Some("web.service".into()),
                    ..Default::default()
                },
                &["files/web/*"],
                false,
            ),
        ];
        let web = peer(0, 0, &[], None, Some("web.service"));
        let other = peer(0, 0, &[], None, Some("other.service"));
        assert_eq!(
            decide_credential(&rules, &web, "files", "web/db"),
            Decision::Allow { rule: 1 }
        );
        // The uid-0 rule would allow this over HTTP, but it names no unit.
        assert_eq!(
            decide_credential(&rules, &web, "files", "other"),
            Decision::Deny
        );
        assert_eq!(
            decide_credential(&rules, &other, "files", "web/db"),
            Decision::Deny
        );
    }

    #[test]
    fn no_rules_denies_everything() {
        let p = peer(0, 0, &[], None, None);
        assert_eq!(decide(&[], &p, "files", "x"), Decision::Deny);
        assert_eq!(decide_admin(&[], &p), Decision::Deny);
    }

    #[test]
    fn empty_peer_match_matches_anyone() {
        let rules = vec![rule(PeerMatch::default(), &["files/public"], false)];
        assert!(
            decide(
                &rules,
                &peer(65534, 65534, &[], None, None),
                "files",
                "public"
            )
            .allowed()
        );
    }

    #[test]
    fn a_user_managers_unit_is_not_a_system_unit() {
        let rules = vec![
            rule(
                PeerMatch {
                    unit: Some("web.service".into()),
                    ..Default::default()
                },
                &["files/web/*"],
                false,
            ),
            rule(
                PeerMatch {
                    uid: Some(1000),
                    user_unit: Some("web.service".into()),
                    ..Default::default()
                },
                &["files/user-web/*"],
                false,
            ),
        ];
        let mut user_web = peer(1000, 1000, &[], None, Some("user@1000.service"));
        user_web.user_unit = Some("web.service".into());
        let system_web = peer(33, 33, &[], None, Some("web.service"));
        let cases: &[(&PeerIdentity, &str, Decision)] = &[
            (&user_web, "web/key", Decision::Deny),
            (&user_web, "user-web/key", Decision::Allow { rule: 1 }),
            (&system_web, "web/key", Decision::Allow { rule: 0 }),
            (&system_web, "user-web/key", Decision::Deny),
        ];
        for (peer, id, want) in cases {
            assert_eq!(decide(&rules, peer, "files", id), *want, "{peer:?} {id}");
        }
    }

    #[test]
    fn exe_is_matched_by_file_identity_not_by_the_path_shown() {
        let rules = vec![rule(
            PeerMatch {
                exe: Some("/usr/bin/app".into()),
                ..Default::default()
            },
            &["files/x"],
            false,
        )];
        // /proc shows the allowed path, but it named another file (a bind mount in the caller's
        // mount namespace): `peer` found no rule path naming the caller's file.
        let mut impostor = peer(1000, 1000, &[], Some("/usr/bin/app"), None);
        impostor.exe_matches.clear();
        assert_eq!(decide(&rules, &impostor, "files", "x"), Decision::Deny);
        // The real file under another name (a symlink the rule names) matches.
        let mut real = peer(1000, 1000, &[], Some("/opt/app/bin/app"), None);
        real.exe_matches = vec!["/usr/bin/app".into()];
        assert_eq!(
            decide(&rules, &real, "files", "x"),
            Decision::Allow { rule: 0 }
        );
    }
}
