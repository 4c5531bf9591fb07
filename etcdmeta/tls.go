package etcdmeta

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// EmbedTLS is the node certificate, its key and the cluster CA an embedded
// member uses for mutual TLS, either as paths to PEM files or as PEM bytes;
// give one form, complete. The certificate must be valid for server and
// client authentication (a cluster/pki node certificate is) and name the
// IP addresses of PeerURL and ClientURL: etcd checks peers' client
// certificates against their source address as well.
type EmbedTLS struct {
	// CertFile, KeyFile and CAFile are paths to PEM files: the node
	// certificate (chain), its private key and the CA certificate that
	// peers' and clients' certificates must chain to.
	CertFile, KeyFile, CAFile string
	// CertPEM, KeyPEM and CAPEM are the same as PEM bytes. StartEmbedded
	// writes them to cert.pem, key.pem and ca.pem under Dir/tls (mode
	// 0600, replaced atomically) because etcd reads its TLS material from
	// files.
	CertPEM, KeyPEM, CAPEM []byte
}

func (t *EmbedTLS) validate() error {
	files := t.CertFile != "" || t.KeyFile != "" || t.CAFile != ""
	pems := len(t.CertPEM) > 0 || len(t.KeyPEM) > 0 || len(t.CAPEM) > 0
	switch {
	case files && pems:
		return errors.New("TLS: give either files or PEM bytes, not both")
	case files && (t.CertFile == "" || t.KeyFile == "" || t.CAFile == ""):
		return errors.New("TLS: CertFile, KeyFile and CAFile are all required")
	case pems && (len(t.CertPEM) == 0 || len(t.KeyPEM) == 0 || len(t.CAPEM) == 0):
		return errors.New("TLS: CertPEM, KeyPEM and CAPEM are all required")
	case !files && !pems:
		return errors.New("TLS: no certificate given")
	}
	return nil
}

// files returns t as file paths, writing PEM bytes under dir/tls first.
func (t *EmbedTLS) files(dir string) (EmbedTLS, error) {
	if t.CertFile != "" {
		return EmbedTLS{CertFile: t.CertFile, KeyFile: t.KeyFile, CAFile: t.CAFile}, nil
	}
	tdir := filepath.Join(dir, "tls")
	if err := os.MkdirAll(tdir, 0o700); err != nil {
		return EmbedTLS{}, fmt.Errorf("embedded etcd: create TLS dir %s: %w", tdir, err)
	}
	out := EmbedTLS{
		CertFile: filepath.Join(tdir, "cert.pem"),
		KeyFile:  filepath.Join(tdir, "key.pem"),
		CAFile:   filepath.Join(tdir, "ca.pem"),
	}
	for _, f := range []struct {
		path string
		data []byte
	}{{out.CertFile, t.CertPEM}, {out.KeyFile, t.KeyPEM}, {out.CAFile, t.CAPEM}} {
		if err := writeFileAtomic(f.path, f.data); err != nil {
			return EmbedTLS{}, fmt.Errorf("embedded etcd: %w", err)
		}
	}
	return out, nil
}

// writeFileAtomic writes data to path with mode 0600 through a temporary
// file in the same directory, so path never holds a partial file.
func writeFileAtomic(path string, data []byte) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
