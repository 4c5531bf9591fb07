// Package freeport picks loopback TCP ports for tests that must name a
// port before the program that listens on it starts.
//
// Asking the kernel for port 0 and closing the listener returns a port
// from the ephemeral range, which the next outgoing connection of any
// process on the machine may take before the test binds it ("address
// already in use", seen in CI with many test packages running at once).
// Addr instead tries random ports below that range, where the kernel
// never picks source ports on its own.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
)

// Addr returns "127.0.0.1:PORT" for a port below the ephemeral range
// that was free a moment ago.
func Addr() (string, error) {
	low := ephemeralLow()
	const first = 10000
	if low <= first+1000 {
		return anyAddr() // an unusual range: fall back to the kernel's pick
	}
	for range 100 {
		addr := fmt.Sprintf("127.0.0.1:%d", first+rand.IntN(low-first))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			continue // taken: try another
		}
		_ = l.Close()
		return addr, nil
	}
	return anyAddr()
}

// anyAddr returns a port the kernel picked.
func anyAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// ephemeralLow returns the first port of the kernel's ephemeral range
// (Linux's default when it cannot be read).
func ephemeralLow() int {
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		var hi int
		if _, err := fmt.Sscan(string(b), &low, &hi); err != nil {
			low = 32768
		}
	}
	return low
}
