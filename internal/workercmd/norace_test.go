//go:build !race

package workercmd

const raceEnabled = false
