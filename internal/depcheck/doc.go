// Package depcheck has no code. Its test keeps packages out of import
// graphs they do not belong in (docs/ARCHITECTURE.md, section 12,
// Packages): the daemons link no CLI rendering (progress bars, plots), the
// coordinator links no trainer, and library packages (pkg/...) no CLI
// framework.
package depcheck
