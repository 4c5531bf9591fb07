package cluster

import (
	"bytes"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

func TestValidate(t *testing.T) {
	good := DefaultConfig()
	good.NodeID = "n1"
	good.SecretKey = make([]byte, 32)
	if err := good.Validate(); err != nil {
		t.Fatalf("good config: %v", err)
	}
	for name, tc := range map[string]struct {
		mod  func(*Config)
		want string
	}{
		"no id":     {func(c *Config) { c.NodeID = "" }, "NodeID"},
		"long id":   {func(c *Config) { c.NodeID = strings.Repeat("x", 65) }, "NodeID"},
		"bind":      {func(c *Config) { c.BindAddr = "localhost:1" }, "BindAddr"},
		"bind port": {func(c *Config) { c.BindAddr = "127.0.0.1:70000" }, "BindAddr"},
		"advertise": {func(c *Config) { c.AdvertiseAddr = ":7946" }, "AdvertiseAddr"},
		"secret":    {func(c *Config) { c.SecretKey = make([]byte, 16) }, "SecretKey"},
		"seed":      {func(c *Config) { c.Seeds = []string{"no-port"} }, "seed"},
		"profile":   {func(c *Config) { c.Profile = "wan" }, "Profile"},
		"timeout":   {func(c *Config) { c.UpdateTimeout = 0 }, "UpdateTimeout"},
		"event buf": {func(c *Config) { c.EventBuffer = -1 }, "EventBuffer"},
	} {
		c := good
		tc.mod(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want one naming %s", name, err, tc.want)
		}
	}
}

func TestGossipKey(t *testing.T) {
	a, err := gossipKey(bytes.Repeat([]byte{1}, 32))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := gossipKey(bytes.Repeat([]byte{2}, 32))
	if len(a) != 32 || bytes.Equal(a, b) || bytes.Equal(a, bytes.Repeat([]byte{1}, 32)) {
		t.Fatalf("keys %x %x", a, b)
	}
}

func TestLogLevels(t *testing.T) {
	for line, want := range map[string]struct {
		level zerolog.Level
		msg   string
	}{
		"[DEBUG] memberlist: Stream connection from=1.2.3.4:5\n": {zerolog.DebugLevel, "Stream connection from=1.2.3.4:5"},
		"[INFO] memberlist: Suspect n2 has failed\n":             {zerolog.InfoLevel, "Suspect n2 has failed"},
		"[WARN] memberlist: Refuting a suspect message\n":        {zerolog.WarnLevel, "Refuting a suspect message"},
		"[ERR] memberlist: Failed to send ack\n":                 {zerolog.ErrorLevel, "Failed to send ack"},
		"[ERROR] memberlist: Failed to compress\n":               {zerolog.ErrorLevel, "Failed to compress"},
		"[ERR] Failed to shutdown transport: x\n":                {zerolog.ErrorLevel, "Failed to shutdown transport: x"},
		"no prefix\n": {zerolog.InfoLevel, "no prefix"},
	} {
		level, msg := parseLogLine([]byte(line))
		if level != want.level || msg != want.msg {
			t.Errorf("%q: got %v %q, want %v %q", line, level, msg, want.level, want.msg)
		}
	}

	var buf bytes.Buffer
	l := newStdLogger(zerolog.New(&buf).Level(zerolog.InfoLevel))
	l.Printf("[DEBUG] memberlist: hidden")
	l.Printf("[WARN] memberlist: shown %d", 1)
	if got := buf.String(); strings.Contains(got, "hidden") || !strings.Contains(got, `"level":"warn","message":"shown 1"`) {
		t.Fatalf("log output %q", got)
	}
}
