//! Who the application runs as: resolving `--uid/--gid` (or the tap's) and dropping to them
//! after the listeners are bound and the log files opened.

use std::ffi::CString;

use host::exit::{self, Failure};
use host::Principal;
use nix::unistd::{getegid, geteuid, Gid, Group, Uid, User};

/// The identity to become.
#[derive(Debug, Clone)]
pub struct Target {
    pub uid: Option<Uid>,
    pub gid: Gid,
    /// The user's name, for initgroups; None when only a group was asked for or the uid has
    /// no passwd entry.
    user: Option<CString>,
    described: String,
}

impl Target {
    /// The owner to give files created before the drop.
    pub fn owner(&self) -> (Uid, Gid) {
        (self.uid.unwrap_or_else(geteuid), self.gid)
    }
}

/// Where a user or group came from, for messages: the option, or the tap (with the place of
/// the value in its file, `web.tas:5:10`, when known).
#[derive(Debug, Clone, Copy)]
pub enum From<'a> {
    Flag,
    Tap(Option<&'a str>),
}

/// The flag when given (flags override the tap, each on its own), else the tap's, found at
/// `place` in the tap's file.
pub fn either<'a>(
    flag: Option<&'a Principal>,
    tap: Option<&'a Principal>,
    place: Option<&'a str>,
) -> Option<(&'a Principal, From<'a>)> {
    flag.map(|p| (p, From::Flag))
        .or(tap.map(|p| (p, From::Tap(place))))
}

fn label(from: From, option: &str) -> String {
    match from {
        From::Flag => format!("--{option}"),
        From::Tap(None) => format!("the tap's {option}"),
        From::Tap(Some(place)) => format!("{place}: the tap's {option}"),
    }
}

/// `--uid` alone takes that user's primary group; `--gid` alone changes only the group.
pub fn resolve(
    uid: Option<(&Principal, From)>,
    gid: Option<(&Principal, From)>,
) -> Result<Option<Target>, Failure> {
    let uid_label = uid.map(|(_, from)| label(from, "uid")).unwrap_or_default();
    let gid_label = gid.map(|(_, from)| label(from, "gid")).unwrap_or_default();
    let (uid, gid) = (uid.map(|(p, _)| p), gid.map(|(p, _)| p));
    if uid.is_none() && gid.is_none() {
        return Ok(None);
    }
    let user = match uid {
        None => None,
        Some(Principal::Name(name)) => Some(
            User::from_name(name)
                .map_err(|e| Failure::config(format!("{uid_label} {name}: {e}")))?
                .ok_or_else(|| Failure::config(format!("{uid_label} {name}: no such user")))?,
        ),
        Some(Principal::Id(id)) => User::from_uid(Uid::from_raw(*id))
            .map_err(|e| Failure::config(format!("{uid_label} {id}: {e}")))?,
    };
    let gid = match gid {
        Some(Principal::Name(name)) => {
            Group::from_name(name)
                .map_err(|e| Failure::config(format!("{gid_label} {name}: {e}")))?
                .ok_or_else(|| Failure::config(format!("{gid_label} {name}: no such group")))?
                .gid
        }
        Some(Principal::Id(id)) => Gid::from_raw(*id),
        None => match &user {
            Some(user) => user.gid,
            None => {
                return Err(Failure::config(format!(
                    "{uid_label} {}: no passwd entry to take a group from; give --gid too",
                    uid.expect("uid given when gid is not")
                )))
            }
        },
    };
    let uid_value = match (uid, &user) {
        (_, Some(user)) => Some(user.uid),
        (Some(Principal::Id(id)), None) => Some(Uid::from_raw(*id)),
        _ => None,
    };
    let described = match (&user, uid_value) {
        (Some(user), _) => format!("user {} (uid {}, gid {gid})", user.name, user.uid),
        (None, Some(uid)) => format!("uid {uid}, gid {gid}"),
        (None, None) => format!("gid {gid}"),
    };
    Ok(Some(Target {
        uid: uid_value,
        gid,
        user: user.and_then(|u| CString::new(u.name).ok()),
        described,
    }))
}

/// Becomes `target`: supplementary groups (the user's, or only `gid`: root's are dropped), the
/// group, then the user. Without root this only succeeds when nothing would change.
pub fn drop_to(target: &Target) -> Result<(), Failure> {
    let already = target.uid.is_none_or(|uid| uid == geteuid()) && target.gid == getegid();
    if !geteuid().is_root() {
        if already {
            return Ok(());
        }
        return Err(Failure::new(
            exit::NOPERM,
            format!("cannot switch to {}: not running as root", target.described),
        ));
    }
    let denied = |what: &str, e: nix::Error| {
        Failure::new(
            exit::NOPERM,
            format!("{what} for {}: {e}", target.described),
        )
    };
    match &target.user {
        Some(name) => {
            nix::unistd::initgroups(name, target.gid).map_err(|e| denied("initgroups", e))?
        }
        None => nix::unistd::setgroups(&[target.gid]).map_err(|e| denied("setgroups", e))?,
    }
    nix::unistd::setgid(target.gid).map_err(|e| denied("setgid", e))?;
    if let Some(uid) = target.uid {
        nix::unistd::setuid(uid).map_err(|e| denied("setuid", e))?;
    }
    tracing::info!("running as {}", target.described);
    Ok(())
}
