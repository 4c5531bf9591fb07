#!/bin/sh
# Installs the Debian packages the test suites need: qemu and a Debian
# kernel for the guest that runs the Linux NFS client, busybox and cpio
# for its initramfs; rpcbind and nfs-common, whose rpcbind, rpc.statd and
# sm-notify (with their libraries) go into the initramfs of the guests that
# lock files without `nolock` (tests/e2e TestKernelLocks). Idempotent; run
# as root.
set -eu
pkgs="qemu-system-x86 linux-image-amd64 busybox-static cpio kmod libnfs-utils rpcbind nfs-common"
missing=""
for p in $pkgs; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
	export DEBIAN_FRONTEND=noninteractive
	# rpcbind's and nfs-common's packages start their daemons where an
	# init system runs; the host must keep port 111 free (the plain-mount
	# test binds it), and only the guests run these daemons. A
	# policy-rc.d that says no, for the length of the install, unless the
	# machine already has one.
	policy=/usr/sbin/policy-rc.d
	if [ ! -e "$policy" ]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy"
		chmod 755 "$policy"
		trap 'rm -f "$policy"' EXIT
	fi
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends $missing
fi
