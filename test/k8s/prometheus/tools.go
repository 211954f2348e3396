//go:build tools

// Package tools pins the command the cluster tests build, so that `go mod tidy` keeps its dependencies
// in go.sum.
package tools

import _ "github.com/prometheus/prometheus/cmd/prometheus"
