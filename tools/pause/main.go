// Command pause is the sandbox ("pause") container of the local cluster's pods.
//
// containerd's CRI plugin starts one per pod to hold its namespaces. The usual image comes from a registry this
// machine cannot reach, so the cluster builds this static binary into a one-file image instead. It sleeps until
// SIGINT or SIGTERM and reaps any child re-parented to it, as the upstream pause does.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
