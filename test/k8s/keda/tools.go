//go:build tools

// Package tools pins the commands the cluster tests build, so that `go mod tidy` keeps their dependencies
// in go.sum.
package tools

import (
	_ "github.com/kedacore/keda/v2/cmd/adapter"
	_ "github.com/kedacore/keda/v2/cmd/operator"
)
