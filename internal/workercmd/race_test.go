//go:build race

package workercmd

const raceEnabled = true
