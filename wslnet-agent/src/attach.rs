//! Attaching the datapath's two programs to an interface, and undoing it.
//!
//! - **TCX** (kernel >= 6.6): one BPF link per hook, pinned at
//!   `<pin dir>/links/if<ifindex>-<ingress|egress>` ([`pins::link_pin`]). The pin keeps the
//!   program attached while no agent runs; a restarted agent swaps its freshly loaded program
//!   into the pinned link with `bpf_link_update` (no moment without clamping), and counters
//!   continue because the maps are pinned too. While it runs, the agent also holds each link open ([`HeldLink`]): a
//!   removed pin then detaches nothing, and [`HeldLink::restore_pin`] puts it back.
//! - **clsact**: a clsact qdisc (created if missing) with one cls_bpf filter per hook at a fixed
//!   priority and handle ([`TC_PRIORITY`], [`TC_HANDLE`]). Filters outlive the agent by nature;
//!   a restarted agent replaces them in place, which also cleans up filters of a crashed run.
//!
//! How each interface was attached is recorded in its [`IfaceConfig::flags`] in the pinned
//! interface map, so `detach` and a restarted agent know what to undo.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    programs::{
        SchedClassifier, TcAttachType,
        links::{FdLink, Link as _, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttach, TcHandle},
    },
};
use wslnet_common::{IfaceConfig, iface_flags, program_names};

use crate::{config::AttachMode, pins};

/// tc filter priority of wslnet's cls_bpf filters (clsact mode).
pub const TC_PRIORITY: u16 = 0x5754;
/// tc filter handle of wslnet's cls_bpf filters (clsact mode).
pub const TC_HANDLE: u32 = 0x5754;

/// The two hooks.
pub const HOOKS: [TcAttachType; 2] = [TcAttachType::Ingress, TcAttachType::Egress];

/// "ingress" or "egress".
pub fn hook_name(hook: TcAttachType) -> &'static str {
    match hook {
        TcAttachType::Ingress => "ingress",
        TcAttachType::Egress => "egress",
    }
}

/// How an interface is attached, as its [`iface_flags`] record it (`status`, metric labels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// TCX links ([`AttachMode::Tcx`]).
    Tcx,
    /// clsact filters ([`AttachMode::Clsact`]).
    Clsact,
    /// Neither: not attached (yet).
    Unattached,
}

impl Mode {
    /// The mode `flags` record.
    pub fn of(flags: u16) -> Mode {
        if flags & iface_flags::TCX != 0 {
            Mode::Tcx
        } else if flags & iface_flags::CLSACT != 0 {
            Mode::Clsact
        } else {
            Mode::Unattached
        }
    }

    /// The name in `status` (text and JSON) and in metric labels: "tcx" or "clsact" (as
    /// [`AttachMode::name`]), "none".
    pub fn name(self) -> &'static str {
        match self {
            Mode::Tcx => AttachMode::Tcx.name(),
            Mode::Clsact => AttachMode::Clsact.name(),
            Mode::Unattached => "none",
        }
    }
}

crate::serialize_as_name!(Mode);

/// True when the running kernel has TCX (6.6 or later).
pub fn kernel_has_tcx() -> bool {
    aya::util::KernelVersion::current()
        .map(|v| v >= aya::util::KernelVersion::new(6, 6, 0))
        .unwrap_or(false)
}

/// The concrete mode for a preference.
pub fn resolve_mode(pref: AttachMode) -> AttachMode {
    match pref {
        AttachMode::Auto if kernel_has_tcx() => AttachMode::Tcx,
        AttachMode::Auto => AttachMode::Clsact,
        m => m,
    }
}

fn program(ebpf: &mut Ebpf, hook: TcAttachType) -> Result<&mut SchedClassifier> {
    let name = match hook {
        TcAttachType::Ingress => program_names::INGRESS,
        TcAttachType::Egress => program_names::EGRESS,
    };
    let prog: &mut SchedClassifier = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the datapath object"))?
        .try_into()
        .with_context(|| format!("program {name} is not a tc classifier"))?;
    Ok(prog)
}

/// Loads (verifies) both programs into the kernel.
pub fn load_programs(ebpf: &mut Ebpf) -> Result<()> {
    for hook in HOOKS {
        let prog = program(ebpf, hook)?;
        prog.load().with_context(|| {
            format!(
                "the kernel's verifier rejected the {} program; run with RUST_LOG=debug and \
                 report the verifier log",
                hook_name(hook)
            )
        })?;
    }
    Ok(())
}

/// A TCX link of this run, held open while the agent runs. A link stays attached while a pin
/// or an open fd refers to it: held, it survives the removal of its pin (by hand, or by a tool
/// that cleans bpffs), which would otherwise switch clamping off with the agent still
/// "running". Dropping it closes the fds; the pin, when there, keeps the link.
pub struct HeldLink {
    /// Keeps the link attached; never given up while held (never read: holding is its job).
    _holder: FdLink,
    /// A second reference, consumed to pin the link again ([`FdLink::pin`] takes the link it
    /// pins, and drops it on failure); `None` after a failed re-pin.
    spare: Option<FdLink>,
    /// Where the pin belongs.
    pin: PathBuf,
}

impl HeldLink {
    /// Holds the link pinned at `pin`.
    fn open(holder: FdLink, pin: PathBuf) -> Result<Self> {
        let spare = PinnedLink::from_pin(&pin)
            .with_context(|| format!("opening pinned link {}", pin.display()))?;
        Ok(Self {
            _holder: holder,
            spare: Some(FdLink::from(spare)),
            pin,
        })
    }

    /// Where the pin belongs.
    pub fn pin_path(&self) -> &Path {
        &self.pin
    }

    /// Pins the link again when its pin is gone. `Ok(true)` when it did, `Ok(false)` when the
    /// pin is there.
    pub fn restore_pin(&mut self) -> Result<bool> {
        if self.pin.exists() {
            return Ok(false);
        }
        let spare = self
            .spare
            .take()
            .context("no reference left to pin the link with (an earlier re-pin failed)")?;
        let pinned = spare
            .pin(&self.pin)
            .with_context(|| format!("pinning the TCX link at {} again", self.pin.display()))?;
        self.spare = Some(FdLink::from(pinned));
        Ok(true)
    }
}

/// An interface's attachment: its [`iface_flags`], and the TCX links this run holds (none
/// for clsact, whose filters need no holder).
pub struct Attachment {
    pub flags: u16,
    pub links: Vec<HeldLink>,
}

/// Attaches both programs to `ifindex` in `mode` (Tcx or Clsact), adopting an existing
/// attachment of an earlier run. `previous` is the interface's entry in the pinned map, if
/// any.
pub fn attach(
    ebpf: &mut Ebpf,
    pin_dir: &Path,
    ifindex: u32,
    mode: AttachMode,
    previous: Option<IfaceConfig>,
) -> Result<Attachment> {
    match mode {
        AttachMode::Tcx => {
            std::fs::create_dir_all(pins::links_dir(pin_dir))
                .context("creating the links pin directory")?;
            let mut links = Vec::new();
            for hook in HOOKS {
                links.push(attach_tcx(ebpf, pin_dir, ifindex, hook)?);
            }
            Ok(Attachment {
                flags: iface_flags::TCX,
                links,
            })
        }
        AttachMode::Clsact => {
            let created = match tc::qdisc_add_clsact(ifindex) {
                Ok(()) => true,
                Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {
                    // Ours from an earlier run, or somebody else's: keep who created it.
                    previous.is_some_and(|p| p.flags & iface_flags::QDISC_CREATED != 0)
                }
                Err(e) => {
                    return Err(e).context(
                        "adding a clsact qdisc; the kernel needs CONFIG_NET_SCH_INGRESS \
                         (see `wslnet-agent check`)",
                    );
                }
            };
            for hook in HOOKS {
                attach_clsact(ebpf, ifindex, hook)?;
            }
            let created = if created {
                iface_flags::QDISC_CREATED
            } else {
                0
            };
            Ok(Attachment {
                flags: iface_flags::CLSACT | created,
                links: Vec::new(),
            })
        }
        AttachMode::Auto => bail!("attach mode must be resolved before attaching"),
    }
}

fn attach_tcx(
    ebpf: &mut Ebpf,
    pin_dir: &Path,
    ifindex: u32,
    hook: TcAttachType,
) -> Result<HeldLink> {
    let pin = pins::link_pin(pin_dir, ifindex, hook);
    let prog = program(ebpf, hook)?;
    if pin.exists() {
        // Adopt: swap this run's program into the pinned link, atomically.
        let adopted = PinnedLink::from_pin(&pin)
            .map_err(anyhow::Error::from)
            .and_then(|p| Ok(SchedClassifierLink::try_from(FdLink::from(p))?))
            .and_then(|link| Ok(prog.attach_to_link(link)?));
        match adopted {
            Ok(id) => {
                let link: FdLink = prog.take_link(id)?.try_into()?;
                return HeldLink::open(link, pin);
            }
            Err(e) => {
                tracing::warn!(pin = %pin.display(), error = %e, "stale link pin, replacing it");
                let _ = std::fs::remove_file(&pin);
            }
        }
    }
    let id = prog
        .attach(
            ifindex,
            TcAttach::Tcx {
                attach_type: hook,
                order: Default::default(),
            },
        )
        .with_context(|| format!("attaching the {} program with TCX", hook_name(hook)))?;
    let link: FdLink = prog.take_link(id)?.try_into()?;
    let pinned = link
        .pin(&pin)
        .with_context(|| format!("pinning the TCX link at {}", pin.display()))?;
    HeldLink::open(FdLink::from(pinned), pin)
}

fn attach_clsact(ebpf: &mut Ebpf, ifindex: u32, hook: TcAttachType) -> Result<()> {
    let prog = program(ebpf, hook)?;
    let options = NlOptions {
        priority: TC_PRIORITY,
        handle: TcHandle::from(TC_HANDLE),
        ..Default::default()
    };
    let id = match prog.attach(
        ifindex,
        TcAttach::Netlink {
            parent: hook.into(),
            options,
        },
    ) {
        Ok(id) => id,
        Err(_) => {
            // A filter of an earlier run holds our priority and handle: replace it in place.
            let existing = SchedClassifierLink::attached(
                ifindex,
                hook.into(),
                TC_PRIORITY,
                TcHandle::from(TC_HANDLE),
                None,
            )?;
            prog.attach_to_link(existing).with_context(|| {
                format!(
                    "attaching the {} program with a clsact filter; the kernel needs \
                     CONFIG_NET_CLS_BPF (see `wslnet-agent check`)",
                    hook_name(hook)
                )
            })?
        }
    };
    // Filters stay attached after the agent exits until `detach` removes them.
    std::mem::forget(prog.take_link(id)?);
    Ok(())
}

/// The hooks of `ifindex` whose wslnet cls_bpf filter (our [`TC_PRIORITY`] and [`TC_HANDLE`]) is
/// missing: deleted with `tc filter del`, or with the whole clsact qdisc (a network reset may do
/// that), while the agent runs.
pub async fn missing_clsact_filters(ifindex: u32) -> Result<Vec<TcAttachType>> {
    use futures::TryStreamExt as _;
    use rtnetlink::packet_route::tc::{TcAttribute, TcHandle as NlHandle};

    let (conn, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
    let task = tokio::spawn(conn);
    let mut missing = Vec::new();
    for hook in HOOKS {
        let request = handle.traffic_filter(ifindex as i32).get();
        let request = match hook {
            TcAttachType::Ingress => request.ingress(),
            _ => request.egress(),
        };
        let filters: Vec<_> = match request.execute().try_collect().await {
            Ok(f) => f,
            // No clsact qdisc (EINVAL) or no interface any more (ENODEV): no filter either.
            Err(rtnetlink::Error::NetlinkError(e))
                if [-libc::EINVAL, -libc::ENODEV].contains(&e.raw_code()) =>
            {
                Vec::new()
            }
            Err(e) => {
                task.abort();
                return Err(e)
                    .with_context(|| format!("listing the tc filters of ifindex {ifindex}"));
            }
        };
        let ours = filters.iter().any(|f| {
            f.header.handle == NlHandle::from(TC_HANDLE)
                && f.header.info >> 16 == u32::from(TC_PRIORITY)
                && f.attributes
                    .iter()
                    .any(|a| matches!(a, TcAttribute::Kind(k) if k == "bpf"))
        });
        if !ours {
            missing.push(hook);
        }
    }
    task.abort();
    Ok(missing)
}

/// Removes the attachment described by `flags` from `ifindex` (which may be gone already). A
/// TCX link is detached once its pin is removed and no fd refers to it: drop this run's
/// [`HeldLink`]s of the interface first.
pub async fn detach(pin_dir: &Path, ifindex: u32, flags: u16) -> Result<()> {
    if flags & iface_flags::TCX != 0 {
        for hook in HOOKS {
            let pin = pins::link_pin(pin_dir, ifindex, hook);
            if pin.exists() {
                // Unpinning drops the last reference: the kernel detaches the link.
                let link = PinnedLink::from_pin(&pin)
                    .with_context(|| format!("opening pinned link {}", pin.display()))?;
                link.unpin()
                    .with_context(|| format!("removing pin {}", pin.display()))?;
            }
        }
    }
    if flags & iface_flags::CLSACT != 0 && interface_exists(ifindex) {
        for hook in HOOKS {
            if let Ok(link) = SchedClassifierLink::attached(
                ifindex,
                hook.into(),
                TC_PRIORITY,
                TcHandle::from(TC_HANDLE),
                None,
            ) {
                // Fails when the filter is gone already; whether ours is left is checked below.
                let _ = link.detach();
            }
        }
        let left = missing_clsact_filters(ifindex).await?;
        if left.len() < HOOKS.len() {
            bail!(
                "the wslnet tc filters of ifindex {ifindex} are still attached after removing them                  (remove them with `tc filter del dev <interface> ingress|egress pref {TC_PRIORITY}`)"
            );
        }
        if flags & iface_flags::QDISC_CREATED != 0 {
            crate::ifaces::delete_clsact(ifindex).await?;
        }
    }
    Ok(())
}

/// True when an interface with this index exists in our network namespace.
pub fn interface_exists(ifindex: u32) -> bool {
    interface_name(ifindex).is_some()
}

/// The name of an interface, if it exists.
pub fn interface_name(ifindex: u32) -> Option<String> {
    nix::net::if_::if_indextoname(ifindex)
        .ok()
        .map(|n| n.to_string_lossy().into_owned())
}
