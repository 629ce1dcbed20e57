# description: the vmm crate's real-vhost unit test (vhost_tests.rs) in L1, where /dev/vhost-net exists: guest memory allocated by the test, a tap in a network namespace it creates, no KVM; TX and RX through the kernel, nothing after a reset, a second activation on new memory. The harness builds the static test binary (`# needs: vmm-tests`); the test also checks that the NIC metrics (the tap's kernel counters) see vhost's frames
# timeout: 120
# needs: vmm-tests
# expect: test virtio::net::vhost_tests::real_vhost_net_moves_frames_and_survives_reset_and_new_memory \.\.\. ok
# expect: test result: ok\. 1 passed
# reject: skipped: no /dev/vhost-net
# In L1 the binary is /lab/bin/vmm-tests; in direct mode the harness names it.
T=${LAB_BIN_VMM_TESTS:-/lab/bin/vmm-tests}
[ -x "$T" ] || { echo "no /lab/bin/vmm-tests: the harness builds it for \`# needs: vmm-tests\` (tests/lab/README.md)"; exit 1; }
for m in vhost_iotlb vhost vhost_net; do insmod "/lib/modules/lab/$m.ko" 2>/dev/null; done
[ -c /dev/vhost-net ] || { echo "L1 has no /dev/vhost-net"; exit 1; }
"$T" --exact virtio::net::vhost_tests::real_vhost_net_moves_frames_and_survives_reset_and_new_memory --nocapture --test-threads 1 </dev/null 2>&1
