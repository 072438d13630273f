// Test-only stand-in for monis.app/mlog, which the Go module proxy refuses (403); see mlog.go.
module monis.app/mlog

go 1.22

require k8s.io/klog/v2 v2.120.1
