// Test-only stand-in for monis.app/mlog, a module the Go module proxy refuses (403). It provides
// exactly what the Secrets Store CSI driver v1.6.0 calls, on top of klog; --log-format-json has no effect.
package mlog

import (
	"context"

	"k8s.io/klog/v2"
)

type LogFormat string

const (
	FormatText LogFormat = "text"
	FormatJSON LogFormat = "json"
)

// Setup is used as `defer mlog.Setup()()`: flush buffered logs on exit.
func Setup() func() { return klog.Flush }

// ValidateAndSetKlogLevelAndFormatGlobally accepts anything: the driver has already parsed klog's
// flags, so level and format are in force.
func ValidateAndSetKlogLevelAndFormatGlobally(_ context.Context, _ klog.Level, _ LogFormat) error {
	return nil
}

func Error(msg string, err error, keysAndValues ...any) {
	klog.ErrorS(err, msg, keysAndValues...)
}

func Fatal(err error, keysAndValues ...any) {
	klog.ErrorS(err, "fatal error", keysAndValues...)
	klog.FlushAndExit(klog.ExitFlushTimeout, 1)
}
