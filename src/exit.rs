//! Failures of the `berth` command, each with its own exit code (documented in
//! docs/operations.md) and a one-line message that names the fix.

use std::path::Path;

use vmm::arch::boot::BootError;
use vmm::VmError;

/// A reason `berth` exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The VM ran and then failed (KVM error, vCPU failure).
    #[error("{0}")]
    GuestFailed(String),
    /// A file named on the command line is missing or unreadable.
    #[error("{0}")]
    File(String),
    /// KVM is missing or not accessible.
    #[error("{0}")]
    Kvm(String),
    /// The kernel cannot be booted.
    #[error("{0}")]
    Kernel(String),
    /// The machine's size is not acceptable.
    #[error("{0}")]
    Config(String),
    /// Building the VM failed for another reason.
    #[error("{0}")]
    Setup(String),
    /// A command-line value is malformed (beyond what the parser checks).
    #[error("{0}")]
    Usage(String),
    /// A disk image cannot be opened or created.
    #[error("{0}")]
    Disk(String),
    /// Pod networking could not be set up.
    #[error("{0}")]
    Network(String),
    /// The guest ignored the power button and was stopped.
    #[error("{0}")]
    ShutdownTimeout(String),
    /// Bad seed input: invalid or oversized metadata or user data, a bad MAC or host name.
    #[error("{0}")]
    Input(String),
    /// The base image cannot be found or downloaded.
    #[error("{0}")]
    Fetch(String),
    /// A disk image is in use by another process (another berth, QEMU, qemu-img).
    #[error("{0}")]
    DiskInUse(String),
    /// The VNC console would be open to the network without a password (and the insecure
    /// override is not given).
    #[error("{0}")]
    InsecureConsole(String),
    /// berth could not confine itself (seccomp, capabilities, uid switch, Landlock); the
    /// same code ends berth when a thread makes a syscall its seccomp filter forbids.
    #[error("{0}")]
    Sandbox(String),
    /// vhost-net was required (`vhost=on`, BERTH_VHOST=on) and cannot serve the NIC.
    #[error("{0}")]
    Vhost(String),
}

impl Failure {
    /// A missing or unreadable file.
    pub fn file(path: &Path, e: std::io::Error) -> Self {
        let fix = match e.kind() {
            std::io::ErrorKind::NotFound => "check the path",
            std::io::ErrorKind::PermissionDenied => "check its permissions",
            _ => "check the file",
        };
        Failure::File(format!("cannot open {}: {e}; {fix}", path.display()))
    }

    /// The process exit code.
    pub fn code(&self) -> u8 {
        match self {
            Failure::GuestFailed(_) => 1,
            Failure::File(_) => 3,
            Failure::Kvm(_) => 4,
            Failure::Kernel(_) => 5,
            Failure::Config(_) => 6,
            Failure::Setup(_) => 7,
            Failure::Usage(_) => 2,
            Failure::Disk(_) => 9,
            Failure::ShutdownTimeout(_) => 11,
            Failure::Network(_) => 12,
            Failure::Input(_) => 8,
            Failure::Fetch(_) => 10,
            Failure::DiskInUse(_) => 13,
            Failure::InsecureConsole(_) => 15,
            Failure::Sandbox(_) => sandbox::EXIT_SECCOMP as u8,
            Failure::Vhost(_) => 16,
        }
    }
}

impl From<VmError> for Failure {
    fn from(e: VmError) -> Self {
        let msg = e.to_string();
        match e {
            VmError::NoKvm | VmError::KvmPermission => Failure::Kvm(msg),
            VmError::VcpuCount(_)
            | VmError::KvmVcpuLimit { .. }
            | VmError::MemoryTooSmall(_)
            | VmError::MemoryAlloc(_) => Failure::Config(msg),
            VmError::Boot(b) => match b {
                BootError::Read { .. } => Failure::File(msg),
                BootError::InitrdTooLarge { .. } | BootError::GuestMemory => Failure::Config(msg),
                _ => Failure::Kernel(msg),
            },
            VmError::Kvm { .. } | VmError::Device(_) | VmError::Thread(_) => Failure::Setup(msg),
        }
    }
}

impl From<vmm::block::DiskError> for Failure {
    fn from(e: vmm::block::DiskError) -> Self {
        match e {
            vmm::block::DiskError::Locked { .. } => Failure::DiskInUse(e.to_string()),
            e => Failure::Disk(e.to_string()),
        }
    }
}

impl From<crate::imageboot::ImageBootError> for Failure {
    fn from(e: crate::imageboot::ImageBootError) -> Self {
        match e {
            crate::imageboot::ImageBootError::Disk(d) => Failure::from(d),
            e => Failure::Kernel(e.to_string()),
        }
    }
}
