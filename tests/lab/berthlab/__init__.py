"""berthlab: the KVM lab harness for berth (Python 3 standard library only).

The host's /dev/kvm may be unable to boot Linux (kvm_pvm). The lab then boots an "L1" Linux
under QEMU's emulator (TCG) whose kvm_amd provides a real /dev/kvm, and runs the scenario
scripts of tests/lab/scenarios/ inside it; results come back as marker lines on L1's serial
console. On a host whose /dev/kvm can boot Linux the same scenarios run directly.

Modules:
  paths      where the repository, cache, scenarios and logs live
  scenario   scenario files: header parsing and judging their output
  console    reading a console stream: timestamps, logs, splitting per scenario
  images     building berth and the guest images (calls guest-images/*.sh)
  modes      choosing between the L1 lab and direct mode
  runner     running scenarios (in L1, or directly) and collecting results
  report     the summary table and the per-scenario cost history
  demo       the interactive demo guest
  cli        the `lab` command line
"""
