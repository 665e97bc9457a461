//go:build race

package model

// raceEnabled: the race detector allocates on its own, so allocation counts
// mean nothing under it and the tests that check them skip themselves.
const raceEnabled = true
