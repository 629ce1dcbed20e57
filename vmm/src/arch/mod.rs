//! x86-64 machine specifics: memory layout, Linux boot, registers, CPUID, MSRs, the MP table
//! and ACPI tables.

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;
