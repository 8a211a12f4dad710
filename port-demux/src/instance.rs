//! Which instance runs where. An instance is identified by what the kernel never reuses: its
//! pinned `bpf_link` (whose info names the program it runs and the index of the interface it is
//! attached to) checked against the XDP program that interface runs now, in a namespace known
//! by its cookie. Names, folder names and namespace inodes are never trusted alone: an interface
//! renamed keeps its instance, one moved to another namespace takes it along, and a namespace
//! that inherits a dead one's inode sees nothing of it.
//!
//! Also here: the state of every folder in the bpffs ([`instances`]), the removal of stale ones
//! ([`prune`]) and the completion or removal of what a killed writer left ([`sweep`]).

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::programs::ProgramInfo;
use port_demux_common::{
    LAYOUT_VERSION_V2, LAYOUT_VERSION_V3, LAYOUT_VERSION_V4, LAYOUT_VERSION_V5, LAYOUT_VERSION_V6,
    LAYOUT_VERSION_V7, Meta,
};

use crate::{
    Error, Result, Scope,
    layout::{
        self, DirLock, Folder, LINK_PIN, Owner, PROG_PIN, Stage, instance_dir, read_meta,
        remove_pins, staging_dir,
    },
    netlink,
    scope::{LiveNs, namespaces},
    sys::{self, LinkInfo},
};

const PRUNE: &str = "`port-demux prune` removes it";

/// What an instance folder in the bpffs amounts to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case"))]
pub enum State {
    /// Its program runs on an interface (of a namespace it names when one can be found).
    Running,
    /// Its interface is gone with the namespace it was in: nothing runs.
    NamespaceGone,
    /// Its interface is gone (deleted, or its program detached), its namespace lives on.
    InterfaceGone,
    /// A folder a writer left unfinished: pins missing, a staging folder of a dead process, or
    /// the folder an upgrade killed after its commit point replaces (that upgrade's folder is
    /// the running instance).
    HalfWritten,
}

impl State {
    /// `"running"`, `"namespace-gone"`, `"interface-gone"` or `"half-written"`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::NamespaceGone => "namespace-gone",
            Self::InterfaceGone => "interface-gone",
            Self::HalfWritten => "half-written",
        }
    }
}

/// One instance folder in the bpffs and its state; as JSON `{"dir", "state", "iface", "netns",
/// "netns_cookie", "ifindex", "prog_id", "layout", "hint"}`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Instance {
    /// The pin folder.
    pub dir: PathBuf,
    /// What it amounts to.
    pub state: State,
    /// The interface's name now when running, else the name recorded at load.
    pub iface: Option<String>,
    /// The `/run/netns` name of its namespace, when it has one.
    pub netns: Option<String>,
    /// The cookie of its namespace: where it runs now, else the one recorded at load.
    pub netns_cookie: Option<u64>,
    /// The interface's index: where it runs now, else the one recorded at load.
    pub ifindex: Option<u32>,
    /// The program its link runs.
    pub prog_id: Option<u32>,
    /// The `META` layout version.
    pub layout: Option<u32>,
    /// What to do about it.
    pub hint: String,
}

/// A folder whose pinned link was read. A reader granted read access by group (see the
/// README) cannot open links (the kernel opens them read-write only): for it, `link` has id and
/// program 0 and the interface index the folder records, and the instance is recognised by its
/// folder (see [`reader_match`]).
#[derive(Clone, Debug)]
pub(crate) struct Found {
    pub folder: Folder,
    pub link: LinkInfo,
}

impl Found {
    pub(crate) fn dir(&self) -> &Path {
        self.folder.dir()
    }
}

pub(crate) fn link_of(dir: &Path) -> Option<LinkInfo> {
    sys::pinned_link_info(&dir.join(LINK_PIN)).ok()
}

/// The link of a folder this process may read but not open links in (a reader granted by
/// group, or a bpffs mounted read-only): `Some` with id and program 0 and the recorded
/// interface index when the link pin exists but is denied.
fn unreadable_link(folder: &Folder) -> Option<LinkInfo> {
    // Read-write, which is what a link needs: the read-only retry says EINVAL, not why.
    let err = sys::obj_get(&folder.dir().join(LINK_PIN), false).err()?;
    if !matches!(
        err.raw_os_error(),
        Some(libc::EACCES | libc::EPERM | libc::EROFS)
    ) {
        return None;
    }
    let ifindex = match folder {
        Folder::Current { ifindex, .. } => *ifindex,
        _ => read_meta(folder.dir()).ok()?.ifindex,
    };
    Some(LinkInfo {
        id: 0,
        prog_id: 0,
        ifindex,
    })
}

/// Whether `found`, whose link this process may not open, is `scope`'s instance on
/// `prog_id`: its folder is keyed by `scope`'s cookie (never reused), or is main's folder of
/// `scope`'s inode, and its interface runs an XDP program. Weaker than the link check, and
/// only for readers: writers always open the link.
fn reader_match(found: &Found, scope: &Scope, prog_id: Option<u32>) -> bool {
    found.link.id == 0
        && prog_id.is_some()
        && match &found.folder {
            Folder::Current { cookie, .. } => *cookie == scope.netns_cookie(),
            Folder::Legacy { ino, .. } => *ino == scope.netns_ino(),
            Folder::Staging { .. } => false,
        }
}

/// The XDP program interface `ifindex` of `scope` runs; `None` for none or no such interface.
pub(crate) fn attached_prog(scope: &Scope, ifindex: u32) -> Result<Option<u32>> {
    match scope.run(|| netlink::xdp_query(ifindex))? {
        Ok(attached) => Ok(attached.map(|a| a.prog_id)),
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(Error::io(
            "cannot query XDP on interface index",
            ifindex.to_string(),
            e,
        )),
    }
}

/// Instance folders (not staging ones) with their links, as they are pinned.
fn pinned(folders: Vec<Folder>) -> impl Iterator<Item = Found> {
    folders
        .into_iter()
        .filter(|f| !matches!(f, Folder::Staging { .. }))
        .filter_map(|folder| {
            let link = link_of(folder.dir()).or_else(|| unreadable_link(&folder))?;
            Some(Found { folder, link })
        })
}

/// The commit point, the one rule readers, `status --all` and writers ([`sweep`]) follow: an
/// upgrade's staging folder whose link (the instance's, pinned a second time) runs the program
/// the folder pins has passed its `BPF_LINK_UPDATE`. From then on the data path runs that
/// program with that folder's maps: the folder is the instance, whether its writer still runs
/// (about to rename it into place) or was killed (the next writer does), and whatever folder
/// still pins the same link is its predecessor, on its way out. Costs nothing while no upgrade
/// folder exists (the folder listing names them); two pins opened and read per one that does.
fn committed_upgrade(folder: &Folder) -> Option<Found> {
    let Folder::Staging {
        dir,
        stage: Stage::Upgrade,
        ..
    } = folder
    else {
        return None;
    };
    let link = link_of(dir).filter(|l| l.ifindex != 0)?;
    let prog = ProgramInfo::from_pin(dir.join(PROG_PIN)).ok()?.id();
    (link.prog_id == prog).then(|| Found {
        folder: folder.clone(),
        link,
    })
}

/// The committed upgrade (of `upgrades`, see [`committed_upgrade`]) that replaces the instance
/// whose link is `link`: the one that pins the same link.
fn successor(upgrades: &[Found], link: LinkInfo) -> Option<&Found> {
    upgrades
        .iter()
        .find(|u| link.id != 0 && u.link.id == link.id)
}

/// Instance folders with their links, as readers and writers take them: an instance whose
/// upgrade passed its commit point is that upgrade's staging folder ([`committed_upgrade`]),
/// whether or not the folder it replaces is still in place.
///
/// Readers take no lock: a writer may rename a folder while they list. The folders are listed
/// one level after the other, so a listing that straddles a rename may see the folder in
/// neither place; it is taken again. Every rename of a commit or a retirement moves a folder
/// into or out of `port-demux/` (staging names are never reused), so that folder's names
/// unchanged from before the listing to after the links were read mean none came in between.
fn linked(bpffs: &Path) -> Result<Vec<Found>> {
    let mut tries = 5;
    loop {
        let before = layout::root_names(bpffs)?;
        let folders = layout::folders(bpffs)?;
        let upgrades: Vec<Found> = folders.iter().filter_map(committed_upgrade).collect();
        let mut found: Vec<Found> = pinned(folders)
            .filter(|f| successor(&upgrades, f.link).is_none())
            .collect();
        found.extend(upgrades);
        tries -= 1;
        if tries == 0 || layout::root_names(bpffs)? == before {
            return Ok(found);
        }
    }
}

/// The instance running on interface `ifindex` of `scope`: the folder whose link is attached to
/// that index and runs the program the interface runs.
///
/// A writer at its commit point (an upgrade or `apply`) may switch the interface's program
/// between the query and the folders' scan: the scan then holds the successor, whose link runs
/// a program newer than the one queried. So a miss is checked by querying again: the same
/// program twice means no folder runs it; another one, that a writer switched it meanwhile.
pub(crate) fn find_running(scope: &Scope, ifindex: u32) -> Result<Option<Found>> {
    let mut queried = attached_prog(scope, ifindex)?;
    for _ in 0..SWITCHES_FOLLOWED {
        let Some(prog_id) = queried else {
            return Ok(None);
        };
        let found = linked(scope.bpffs())?.into_iter().find(|f| {
            f.link.ifindex == ifindex
                && (f.link.prog_id == prog_id || reader_match(f, scope, Some(prog_id)))
        });
        let again = attached_prog(scope, ifindex)?;
        if found.is_some() || again == queried {
            return Ok(found);
        }
        queried = again;
    }
    Ok(None)
}

/// Program switches a reader follows before it reports what it sees (each one a writer's
/// commit, which takes a program load and a verification: a few per second at most).
const SWITCHES_FOLLOWED: usize = 3;

/// Every instance running in `scope`, with its interface's name now, sorted by name. Computed
/// until two computations agree (a few times at most), for the reason [`find_running`]
/// queries twice: an instance whose program a writer switched between the scan and the query
/// would be left out.
pub(crate) fn running_in(scope: &Scope) -> Result<Vec<(String, Found)>> {
    let dirs = |list: &[(String, Found)]| -> Vec<PathBuf> {
        list.iter().map(|(_, f)| f.dir().to_owned()).collect()
    };
    let mut seen = running_once(scope)?;
    for _ in 0..SWITCHES_FOLLOWED {
        let again = running_once(scope)?;
        if dirs(&again) == dirs(&seen) {
            return Ok(again);
        }
        seen = again;
    }
    Ok(seen)
}

fn running_once(scope: &Scope) -> Result<Vec<(String, Found)>> {
    let mut running = Vec::new();
    for found in linked(scope.bpffs())? {
        let ifindex = found.link.ifindex;
        if ifindex == 0 {
            continue;
        }
        let attached = attached_prog(scope, ifindex)?;
        if attached == Some(found.link.prog_id) || reader_match(&found, scope, attached) {
            let name = scope
                .ifname(ifindex)?
                .unwrap_or_else(|| format!("ifindex-{ifindex}"));
            running.push((name, found));
        }
    }
    running.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(running)
}

/// The folder whose pinned link is `link_id`, among instance folders; for a reader that cannot
/// open links (`link_id` 0), the folder `dir` if it is still there.
pub(crate) fn by_link_id(bpffs: &Path, link_id: u32, dir: &Path) -> Result<Option<Found>> {
    Ok(linked(bpffs)?
        .into_iter()
        .find(|f| f.link.id == link_id && (link_id != 0 || f.dir() == dir)))
}

/// A stale instance of `scope`'s own (a folder keyed by its cookie, which no other namespace
/// ever has) that was loaded on an interface named `iface`: its program no longer runs.
pub(crate) fn stale_own(scope: &Scope, iface: &str) -> Result<Option<(PathBuf, String)>> {
    for folder in layout::folders(scope.bpffs())? {
        let Folder::Current { dir, cookie, .. } = folder else {
            continue;
        };
        if cookie != scope.netns_cookie()
            || read_meta(&dir).ok().and_then(|m| recorded_name(&m)) != Some(iface.to_owned())
        {
            continue;
        }
        let detail = match link_of(&dir) {
            None => format!("its pins at {} are incomplete", dir.display()),
            Some(link) if link.ifindex == 0 => {
                format!("its interface is gone{}", scope.where_())
            }
            Some(link) if attached_prog(scope, link.ifindex)? == Some(link.prog_id) => continue,
            Some(link) => format!(
                "interface index {} runs it in another network namespace",
                link.ifindex
            ),
        };
        return Ok(Some((dir, detail)));
    }
    Ok(None)
}

impl Scope {
    /// Interfaces (their names now) that run port-demux in this namespace, sorted. Only
    /// running instances: stale ones are listed by [`instances`].
    ///
    /// # Errors
    /// [`Error::NoBpffs`], or when the folders or the interfaces cannot be read.
    pub fn loaded(&self) -> Result<Vec<String>> {
        Ok(running_in(self)?
            .into_iter()
            .map(|(name, _)| name)
            .collect())
    }
}

fn recorded_name(meta: &Meta) -> Option<String> {
    let end = meta
        .ifname
        .iter()
        .position(|&c| c == 0)
        .unwrap_or(meta.ifname.len());
    (end > 0).then(|| String::from_utf8_lossy(&meta.ifname[..end]).into_owned())
}

/// Every instance folder in `bpffs`, whatever its state, in every namespace. Staging folders
/// of writers still running are not instances before their commit point and are left out; an
/// upgrade's past it is the instance (see the README's "The commit point"), and the folder it
/// replaces is left out while its writer runs, half-written once it died.
///
/// # Errors
/// [`Error::NoBpffs`], or when the folders cannot be read.
pub fn instances(bpffs: &Path) -> Result<Vec<Instance>> {
    Ok(evaluate_all(bpffs)?
        .into_iter()
        .map(|(instance, _)| instance)
        .collect())
}

/// An instance [`instances`] reports as [`State::Running`], with the namespace it runs in
/// opened: what a reader of every namespace (the exporter) needs to open it with
/// [`crate::PortDemux::open`].
#[derive(Clone, Debug)]
pub struct Running {
    /// The instance as [`instances`] reports it.
    pub instance: Instance,
    /// The network namespace its interface is in now.
    pub scope: Scope,
}

/// Every instance of `bpffs` that runs now, in every namespace this process can enter (the
/// ones [`instances`] finds): those [`instances`] reports as [`State::Running`], but for
/// one whose namespace neither a `/run/netns` name nor a process holds (nothing can enter it).
///
/// # Errors
/// [`Error::NoBpffs`], or when the folders cannot be read.
pub fn running(bpffs: &Path) -> Result<Vec<Running>> {
    Ok(evaluate_all(bpffs)?
        .into_iter()
        .filter_map(|(instance, scope)| {
            Some(Running {
                instance,
                scope: scope?,
            })
        })
        .collect())
}

/// Every instance folder of `bpffs` as [`evaluate`] finds it, with the namespace of those that
/// run.
fn evaluate_all(bpffs: &Path) -> Result<Vec<(Instance, Option<Scope>)>> {
    let folders = layout::folders(bpffs)?;
    let upgrades: Vec<Found> = folders.iter().filter_map(committed_upgrade).collect();
    let live = namespaces(bpffs);
    folders
        .into_iter()
        .filter_map(|folder| evaluate(&folder, &upgrades, &live).transpose())
        .map(|found| found.map(|(instance, ns)| (instance, ns.map(|ns| ns.scope.clone()))))
        .collect()
}

/// The process that wrote staging folder `found`.
fn owner_of(found: &Found) -> Option<Owner> {
    match found.folder {
        Folder::Staging { owner, .. } => Some(owner),
        _ => None,
    }
}

/// What to do about the folder an upgrade past its commit point replaces (see
/// [`committed_upgrade`]); `None` while that upgrade's writer runs (it renames the folder away
/// in a moment, as it does its own staging folder).
fn replaced_hint(upgrade: &Found) -> Option<String> {
    if owner_of(upgrade).is_none_or(Owner::alive) {
        return None;
    }
    Some(format!(
        "replaced by {}, whose program runs since the upgrade that wrote it was killed after its commit point: `port-demux prune` removes it (so does the next command that changes pins)",
        upgrade.dir().display()
    ))
}

/// What to do about an instance running in `ns`; `upgrade` is the writer of a staging folder
/// past its commit point (see [`committed_upgrade`]).
fn running_hint(
    ns: &LiveNs,
    iface: Option<&str>,
    layout: Option<u32>,
    upgrade: Option<Owner>,
) -> String {
    match upgrade {
        Some(owner) if owner.alive() => {
            return format!(
                "running: an upgrade by port-demux pid {} past its commit point, being renamed into place",
                owner.pid
            );
        }
        Some(owner) => {
            return format!(
                "running: an upgrade by port-demux pid {}, killed after its commit point; the next command that changes pins (or `port-demux prune`) renames it into place",
                owner.pid
            );
        }
        None => {}
    }
    let netns = match (&ns.name, ns.scope.netns_name()) {
        (Some(name), _) => format!(" --netns {name}"),
        (None, None) => String::new(),
        (None, Some(path)) => format!(" --netns {path}"),
    };
    let iface = iface.unwrap_or("IFACE");
    if let Some(
        old @ (LAYOUT_VERSION_V2 | LAYOUT_VERSION_V3 | LAYOUT_VERSION_V4 | LAYOUT_VERSION_V5
        | LAYOUT_VERSION_V6 | LAYOUT_VERSION_V7),
    ) = layout
    {
        format!("running, layout {old}: `port-demux{netns} load {iface} --upgrade` migrates it")
    } else {
        format!("running: `port-demux{netns} status` shows it")
    }
}

/// The instance `folder` holds (`None` for a staging folder of a writer still running, or the
/// folder an upgrade past its commit point replaces while that upgrade's writer runs), and the
/// namespace it runs in when it runs.
fn evaluate<'a>(
    folder: &Folder,
    upgrades: &[Found],
    live: &'a [LiveNs],
) -> Result<Option<(Instance, Option<&'a LiveNs>)>> {
    let dir = folder.dir().to_owned();
    let meta = read_meta(&dir).ok();
    // A link this process cannot open (id 0, see `unreadable_link`) is recognised by its folder.
    let link = link_of(&dir).or_else(|| unreadable_link(folder));
    // Past the commit point of an upgrade, the upgrade's folder is the instance (as readers
    // take it, see `committed_upgrade`), and the folder it replaces is on its way out.
    let committed = upgrades.iter().find(|u| u.dir() == dir).and_then(owner_of);
    let mut this = Instance {
        dir,
        state: State::HalfWritten,
        iface: meta.as_ref().and_then(recorded_name),
        netns: None,
        netns_cookie: None,
        ifindex: meta.map(|m| m.ifindex),
        prog_id: link.filter(|l| l.id != 0).map(|l| l.prog_id),
        layout: meta.map(|m| m.layout_version),
        hint: String::new(),
    };
    if let Some(upgrade) = link.and_then(|l| successor(upgrades, l))
        && committed.is_none()
    {
        let Some(hint) = replaced_hint(upgrade) else {
            return Ok(None);
        };
        this.hint = hint;
        return Ok(Some((this, None)));
    }
    let recorded_cookie = match folder {
        Folder::Staging { target, .. } if committed.is_some() => target.map(|(cookie, _)| cookie),
        Folder::Staging { owner, .. } => {
            if owner.alive() {
                return Ok(None);
            }
            this.hint = format!(
                "left by port-demux pid {}, which died while writing it: `port-demux prune` removes it (so does the next command that changes pins)",
                owner.pid
            );
            return Ok(Some((this, None)));
        }
        Folder::Current {
            cookie, ifindex, ..
        } => {
            this.netns_cookie = Some(*cookie);
            this.ifindex = Some(*ifindex);
            Some(*cookie)
        }
        Folder::Legacy { iface, .. } => {
            this.iface.get_or_insert_with(|| iface.clone());
            None
        }
    };
    let (Some(_), Some(link)) = (meta, link) else {
        this.hint = "pins are missing (a writer was killed): `port-demux prune` removes it".into();
        return Ok(Some((this, None)));
    };
    if link.ifindex != 0 {
        this.state = State::Running;
        this.ifindex = Some(link.ifindex);
        // Where it was loaded first, then everywhere else.
        let mut order: Vec<&LiveNs> = live.iter().collect();
        order.sort_by_key(|ns| Some(ns.scope.netns_cookie()) != recorded_cookie);
        for ns in order {
            let attached = attached_prog(&ns.scope, link.ifindex)?;
            let ours = if link.id == 0 {
                attached.is_some() && Some(ns.scope.netns_cookie()) == recorded_cookie
            } else {
                attached == Some(link.prog_id)
            };
            if ours {
                this.prog_id = attached;
                this.netns.clone_from(&ns.name);
                this.netns_cookie = Some(ns.scope.netns_cookie());
                this.iface = ns.scope.ifname(link.ifindex)?.or(this.iface);
                this.hint = running_hint(ns, this.iface.as_deref(), this.layout, committed);
                return Ok(Some((this, Some(ns))));
            }
        }
    }
    if link.ifindex != 0 && link.id != 0 {
        this.netns_cookie = None;
        this.hint = format!(
            "running on interface index {} of a network namespace that no /run/netns name or process holds open: unload it from there",
            link.ifindex
        );
        return Ok(Some((this, None)));
    }
    let ns_alive = match folder {
        Folder::Legacy { ino, .. } => live.iter().any(|ns| ns.scope.netns_ino() == *ino),
        _ => live
            .iter()
            .any(|ns| Some(ns.scope.netns_cookie()) == recorded_cookie),
    };
    if ns_alive {
        this.state = State::InterfaceGone;
        this.netns = live
            .iter()
            .find(|ns| Some(ns.scope.netns_cookie()) == recorded_cookie)
            .and_then(|ns| ns.name.clone());
        this.hint = format!("its interface is gone and nothing runs: {PRUNE}");
    } else {
        this.state = State::NamespaceGone;
        this.hint = format!("its network namespace is gone and nothing runs: {PRUNE}");
    }
    Ok(Some((this, None)))
}

/// Removes every instance whose state is not [`State::Running`], detaching any program they
/// still hold, and returns them as they were. Takes the writers' lock.
///
/// # Errors
/// [`Error::NoBpffs`], or when a pin cannot be removed.
pub fn prune(bpffs: &Path) -> Result<Vec<Instance>> {
    let lock = DirLock::writers(bpffs)?;
    let stale: Vec<Instance> = instances(bpffs)?
        .into_iter()
        .filter(|i| i.state != State::Running)
        .collect();
    for instance in &stale {
        retire(bpffs, &instance.dir)?;
    }
    sweep(bpffs, &lock)?;
    Ok(stale)
}

/// Moves `dir` out of the way under a staging name, then removes its pins (the link first,
/// which detaches the program unless another folder pins the same link): a kill in between
/// leaves a staging folder the next writer removes, never a half instance.
pub(crate) fn retire(bpffs: &Path, dir: &Path) -> Result<()> {
    let retired = staging_dir(bpffs, Stage::Retired, None);
    match fs::rename(dir, &retired) {
        Ok(()) => remove_pins(&retired),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("cannot move", dir, e)),
    }
}

/// Puts the staging folder `staging` in place at `target`: `old` (a folder of the same
/// instance, whose link `staging` pins too) is retired first, then `staging` renamed. Every
/// step is a rename, and [`sweep`] completes the sequence when a kill stops it. Returns whether
/// a stale folder was removed from `target` ([`make_room`]).
pub(crate) fn commit(
    bpffs: &Path,
    staging: &Path,
    old: Option<&Path>,
    target: &Path,
) -> Result<bool> {
    let mut retired = None;
    if let Some(old) = old.filter(|old| old.exists()) {
        let to = staging_dir(bpffs, Stage::Retired, None);
        fs::rename(old, &to).map_err(|e| Error::io("cannot move", old, e))?;
        retired = Some((old, to));
    }
    let placed = make_room(bpffs, target).and_then(|stale_removed| {
        if let Some(parent) = target.parent() {
            layout::create_dirs(parent)?;
        }
        fs::rename(staging, target).map_err(|e| Error::io("cannot rename pins to", target, e))?;
        Ok(stale_removed)
    });
    match placed {
        Ok(stale_removed) => {
            if let Some((_, to)) = retired {
                remove_pins(&to)?;
            }
            layout::remove_empty_namespace_dirs(bpffs);
            Ok(stale_removed)
        }
        Err(e) => {
            // The predecessor back in place: nothing changed but the staging folder.
            if let Some((old, to)) = retired {
                let _ = fs::rename(to, old);
            }
            Err(e)
        }
    }
}

/// Frees the folder name `target` (never the folder of a running instance, which is moved to
/// where it runs now) and returns whether a stale folder was removed from it.
pub(crate) fn make_room(bpffs: &Path, target: &Path) -> Result<bool> {
    if !target.exists() {
        return Ok(false);
    }
    let Some(link) = link_of(target).filter(|l| l.ifindex != 0) else {
        retire(bpffs, target)?;
        return Ok(true);
    };
    // Its interface took the program to another namespace (or index), and this name is wanted
    // for the interface that has the index here now: the instance moves to where it runs.
    for ns in namespaces(bpffs) {
        if attached_prog(&ns.scope, link.ifindex)? == Some(link.prog_id) {
            let to = instance_dir(bpffs, ns.scope.netns_cookie(), link.ifindex);
            if to == target {
                return Ok(false);
            }
            if to.exists() {
                make_room(bpffs, &to)?;
            }
            if let Some(parent) = to.parent() {
                layout::create_dirs(parent)?;
            }
            fs::rename(target, &to).map_err(|e| Error::io("cannot move", target, e))?;
            return Ok(false);
        }
    }
    Err(Error::Busy {
        path: target.to_owned(),
        ifindex: link.ifindex,
    })
}

/// The staging folder of a dead upgrade: put in place at `target` if it passed its commit
/// point ([`committed_upgrade`]: readers already open it), else removed (its link is pinned by
/// the instance it was to replace, which stays as it was).
fn finish_upgrade(bpffs: &Path, folder: &Folder, target: &Path) -> Result<()> {
    let Some(upgrade) = committed_upgrade(folder) else {
        return remove_pins(folder.dir());
    };
    // The predecessor pins the same link; it may sit at the target's name itself (an upgrade
    // in place), which `commit` retires first.
    let old = pinned(layout::folders(bpffs)?)
        .find(|f| f.link.id == upgrade.link.id)
        .map(|f| f.dir().to_owned());
    commit(bpffs, upgrade.dir(), old.as_deref(), target).map(|_| ())
}

/// Under the writers' lock: finishes or removes what writers that died left. An upgrade whose
/// link already runs its program is completed (its folder put in place); any other staging
/// folder of a dead process is removed (a load's link with it, which detaches its program);
/// empty namespace folders go.
///
/// # Errors
/// When a folder cannot be read, moved or removed.
pub(crate) fn sweep(bpffs: &Path, _lock: &DirLock) -> Result<()> {
    let dead: Vec<Folder> = match layout::folders(bpffs) {
        Ok(folders) => folders,
        Err(Error::NoBpffs { .. }) => return Ok(()),
        Err(e) => return Err(e),
    }
    .into_iter()
    .filter(|f| matches!(f, Folder::Staging { owner, .. } if !owner.alive()))
    .collect();
    // Upgrades first: their predecessor may be a retired folder below, which then goes. A
    // folder that cannot be finished or removed is left for `status --all` to show and `prune`
    // to remove: it must not stop every writer.
    let mut stuck = Vec::new();
    for folder in &dead {
        if let Folder::Staging {
            dir,
            stage: Stage::Upgrade,
            target: Some((cookie, ifindex)),
            ..
        } = folder
            && finish_upgrade(bpffs, folder, &instance_dir(bpffs, *cookie, *ifindex)).is_err()
        {
            stuck.push(dir.as_path());
        }
    }
    for folder in &dead {
        if folder.dir().exists() && !stuck.contains(&folder.dir()) {
            let _ = remove_pins(folder.dir());
        }
    }
    layout::remove_empty_namespace_dirs(bpffs);
    Ok(())
}
