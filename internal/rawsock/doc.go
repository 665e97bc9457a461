// Package rawsock holds the Linux socket fast paths of the lanes
// (pkg/collective's and pkg/transport's): a write(2) issued as a raw
// system call (Writer), a read that polls a non-blocking socket before it
// sleeps in the netpoller (Read), and Conn, a TCP connection whose reads
// poll that way for a configurable time.
//
// Why poll: a thread that sleeps until data arrives needs the kernel to
// wake it, and when its CPU is idle that is an inter-processor interrupt
// and, on a virtual machine, the vCPU's exit from and return to the guest.
// On the 2-vCPU VMs the project is measured on, a message that wakes an
// idle vCPU costs its sender and receiver about 100 us, more than the
// emulated 10 Gbit/s link's whole round trip. A reader that keeps its CPU
// awake by polling takes the message when it lands. The price is the CPU
// it burns while polling, so it pays only where the process has its cores
// to itself (a dedicated host), and every poll is bounded.
package rawsock
