//go:build !race

package main

// raceEnabled: the tests run with -race, and build the binary with it.
const raceEnabled = false
