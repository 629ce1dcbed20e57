# description: the vmm crate's real-vhost unit test (vhost_tests.rs) in L1, where /dev/vhost-net exists: guest memory allocated by the test, a tap in a network namespace it creates, no KVM; TX and RX through the kernel, nothing after a reset, a second activation on new memory. Needs the static test binary: L1_EXTRA_BINS=<path>/vmm-tests (see tests/lab/README.md)
# timeout: 120
# expect: test virtio::net::vhost_tests::real_vhost_net_moves_frames_and_survives_reset_and_new_memory \.\.\. ok
# expect: test result: ok\. 1 passed
# reject: skipped: no /dev/vhost-net
T=/lab/bin/vmm-tests
[ -x "$T" ] || { echo "SKIP: no /lab/bin/vmm-tests; build it (README) and pass L1_EXTRA_BINS"; exit 0; }
[ -c /dev/vhost-net ] || { echo "L1 has no /dev/vhost-net"; exit 1; }
"$T" --exact virtio::net::vhost_tests::real_vhost_net_moves_frames_and_survives_reset_and_new_memory --nocapture --test-threads 1 </dev/null 2>&1
