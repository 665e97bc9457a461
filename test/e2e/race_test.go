//go:build race

package e2e

// raceEnabled: memory measurements mean nothing under the race detector
// (shadow memory), so the RSS test skips itself.
const raceEnabled = true
