package cluster

import (
	"bytes"
	"log"

	"github.com/rs/zerolog"
)

// logWriter turns memberlist's "[LEVEL] memberlist: message" lines into
// zerolog events. memberlist logs routine traffic (stream connections,
// push/pull syncs) at DEBUG and reserves INFO and above for failures, so a
// healthy cluster logs nothing above debug.
type logWriter struct {
	log zerolog.Logger
}

// newStdLogger returns the *log.Logger memberlist writes to.
func newStdLogger(l zerolog.Logger) *log.Logger {
	return log.New(logWriter{log: l}, "", 0)
}

var levelPrefixes = []struct {
	prefix string
	level  zerolog.Level
}{
	{"[TRACE]", zerolog.TraceLevel},
	{"[DEBUG]", zerolog.DebugLevel},
	{"[INFO]", zerolog.InfoLevel},
	{"[WARN]", zerolog.WarnLevel},
	{"[ERR]", zerolog.ErrorLevel},
	{"[ERROR]", zerolog.ErrorLevel},
}

// Write logs one line; log.Logger calls it once per message.
func (w logWriter) Write(p []byte) (int, error) {
	level, msg := parseLogLine(p)
	w.log.WithLevel(level).Msg(msg)
	return len(p), nil
}

// parseLogLine splits a memberlist log line into level and message. Lines
// without a known level prefix are logged at info.
func parseLogLine(p []byte) (zerolog.Level, string) {
	line := bytes.TrimSpace(p)
	level := zerolog.InfoLevel
	for _, lp := range levelPrefixes {
		if rest, ok := bytes.CutPrefix(line, []byte(lp.prefix)); ok {
			level, line = lp.level, bytes.TrimSpace(rest)
			break
		}
	}
	line, _ = bytes.CutPrefix(line, []byte("memberlist: "))
	return level, string(line)
}
