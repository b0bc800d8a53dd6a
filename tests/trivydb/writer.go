// Command writer builds an offline Trivy vulnerability DB (trivy-db schema 2) from
// a small JSON document, for `trivy --cache-dir OUT_DIR --skip-db-update --offline-scan`.
//
// Usage: writer OUT_DIR [INPUT.json | -]   (stdin when INPUT is omitted or "-")
// Writes OUT_DIR/db/trivy.db (bbolt) and OUT_DIR/db/metadata.json.
//
// Input document (unknown fields are rejected):
//
//	{
//	  "updated_at":  "2025-06-01T00:00:00Z",  // required, RFC 3339; also used as DownloadedAt
//	  "next_update": "2035-06-01T00:00:00Z",  // optional, default updated_at + 10 years
//	  "advisories": [{
//	    "id":        "CVE-2024-47874",       // required vulnerability ID
//	    "ecosystem": "pip",                  // required: language ecosystem (pip npm go maven cargo
//	                                         //   composer rubygems nuget ...) or an OS release bucket
//	                                         //   ("debian 12", "ubuntu 22.04", "alpine 3.20")
//	    "package":   "starlette",            // required; for OS ecosystems the SOURCE package
//	                                         //   (libc6 -> "glibc", zlib1g -> "zlib")
//	    "vulnerable": ["<0.40.0"],           // language: constraints, items OR-ed, "," inside = AND
//	    "patched":    ["0.40.0"],            // language: constraints, OR-ed, shown as FixedVersion; a bare
//	                                         //   version matches only itself: also give "vulnerable"
//	    "fixed_version": "2.36-9+deb12u9",   // OS: first fixed version; "" = unfixed, always reported
//	    "severity":  "HIGH",                 // UNKNOWN LOW MEDIUM HIGH CRITICAL (default UNKNOWN)
//	    "title": "...", "description": "...", "references": ["https://..."],  // optional
//	    "vendor_ids": ["GHSA-f96h-pmfr-66vw"]                               // optional
//	  }]
//	}
//
// Buckets written (as in aquasecurity/trivy-db pkg/db and pkg/vulnsrc/bucket):
//
//	"<eco>::<source name>" / <pkg> / <id> -> {"VendorIDs","VulnerableVersions","PatchedVersions"}
//	"<os> <release>"       / <pkg> / <id> -> {"VendorIDs","FixedVersion"}
//	"vulnerability"        / <id>         -> {"Title","Description","Severity","VendorSeverity":{src:n},"References"}
//	"data-source"          / <eco bucket> -> {"ID","Name","URL"}
//
// The output depends only on the input (no clock, sorted writes), byte for byte.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

type dataSource struct{ ID, Name, URL string }

// advisory is one input entry; untagged fields match their lower-case keys
// (encoding/json matches names case-insensitively).
type advisory struct {
	ID, Ecosystem, Package, Severity, Title, Description string
	Vulnerable, Patched, References                      []string
	FixedVersion                                         string   `json:"fixed_version"`
	VendorIDs                                            []string `json:"vendor_ids"`
}

type input struct {
	UpdatedAt  time.Time  `json:"updated_at"`
	NextUpdate *time.Time `json:"next_update"`
	Advisories []advisory `json:"advisories"`
}

// Stored values; field names follow trivy-db types.Advisory, types.Vulnerability
// and metadata.Metadata.
type dbAdvisory struct {
	VendorIDs, VulnerableVersions, PatchedVersions []string `json:",omitempty"`
	FixedVersion                                   string   `json:",omitempty"`
}

type dbVulnerability struct {
	Title, Description, Severity string         `json:",omitempty"`
	VendorSeverity               map[string]int `json:",omitempty"`
	References                   []string       `json:",omitempty"`
}

type metadata struct {
	Version                             int
	NextUpdate, UpdatedAt, DownloadedAt time.Time
}

var severities = []string{"UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL"}

// GitHub Security Advisory ecosystem names, as in trivy-db's ghsa source.
var ghsaNames = map[string]string{
	"composer": "Composer", "go": "Go", "maven": "Maven", "npm": "npm", "nuget": "NuGet",
	"pip": "pip", "rubygems": "RubyGems", "cargo": "Rust", "erlang": "Erlang", "pub": "Pub",
	"swift": "Swift", "cocoapods": "Swift",
}

var osSources = map[string]dataSource{
	"debian": {"debian", "Debian Security Tracker", "https://salsa.debian.org/security-tracker-team/security-tracker"},
	"ubuntu": {"ubuntu", "Ubuntu CVE Tracker", "https://git.launchpad.net/ubuntu-cve-tracker"},
	"alpine": {"alpine", "Alpine Secdb", "https://secdb.alpinelinux.org/"},
}

// isOS reports whether the ecosystem is an OS release bucket such as "debian 12".
func isOS(eco string) bool { return strings.Contains(eco, " ") }

// bucketAndSource returns the top-level bucket name and its data source.
func bucketAndSource(a advisory) (string, dataSource) {
	if isOS(a.Ecosystem) {
		family := strings.Fields(a.Ecosystem)[0]
		src, ok := osSources[family]
		if !ok {
			src = dataSource{ID: family, Name: family}
		}
		return a.Ecosystem, src
	}
	name := ghsaNames[a.Ecosystem]
	if name == "" {
		name = a.Ecosystem
	}
	return a.Ecosystem + "::GitHub Security Advisory " + name, dataSource{"ghsa", "GitHub Security Advisory " + name,
		"https://github.com/advisories?query=type%3Areviewed+ecosystem%3A" + strings.ToLower(name)}
}

// normalizePkg mirrors trivy-db vulnerability.NormalizePkgName.
func normalizePkg(eco, name string) string {
	switch {
	case isOS(eco), eco == "go", eco == "cocoapods", eco == "julia", eco == "swift":
		return name
	case eco == "pip":
		return strings.ReplaceAll(strings.ToLower(name), "_", "-")
	}
	return strings.ToLower(name)
}

// entries collects the DB content: bucket path (joined by "\x00") -> key -> JSON.
type entries map[string]map[string][]byte

func (e entries) put(key string, v interface{}, path ...string) {
	data, _ := json.Marshal(v) // plain structs: cannot fail
	p := strings.Join(path, "\x00")
	if e[p] == nil {
		e[p] = map[string][]byte{}
	}
	e[p][key] = data
}

func addAdvisory(e entries, vulns map[string]*dbVulnerability, a advisory) error {
	if a.ID == "" || a.Ecosystem == "" || a.Package == "" {
		return fmt.Errorf("advisory %+v: id, ecosystem and package are required", a)
	}
	sev := -1
	for i, n := range severities {
		if strings.EqualFold(n, a.Severity) || (a.Severity == "" && i == 0) {
			sev = i
		}
	}
	if sev < 0 {
		return fmt.Errorf("%s: unknown severity %q", a.ID, a.Severity)
	}
	bktName, src := bucketAndSource(a)
	adv := dbAdvisory{VendorIDs: a.VendorIDs}
	if isOS(a.Ecosystem) {
		adv.FixedVersion = a.FixedVersion
	} else if len(a.Vulnerable)+len(a.Patched) == 0 {
		return fmt.Errorf("%s: a language advisory needs vulnerable and/or patched", a.ID)
	} else {
		adv.VulnerableVersions, adv.PatchedVersions = a.Vulnerable, a.Patched
	}
	e.put(a.ID, adv, bktName, normalizePkg(a.Ecosystem, a.Package))
	e.put(bktName, src, "data-source")
	// One "vulnerability" record per ID, merged over all advisories with that ID.
	v := vulns[a.ID]
	if v == nil {
		v = &dbVulnerability{Title: a.Title, Description: a.Description}
		vulns[a.ID] = v
	}
	v.References = append(v.References, a.References...)
	if sev > 0 {
		if v.VendorSeverity == nil {
			v.VendorSeverity, v.Severity = map[string]int{}, severities[sev]
		}
		v.VendorSeverity[src.ID] = sev
	}
	return nil
}

// write stores the entries with one transaction per bucket path, in sorted
// order: bbolt spills the child buckets a transaction touched in map order, so
// touching a single path per transaction keeps the file reproducible.
func write(db *bolt.DB, e entries) error {
	var paths []string
	for p := range e {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		err := db.Update(func(tx *bolt.Tx) error {
			names := strings.Split(p, "\x00")
			b, err := tx.CreateBucketIfNotExists([]byte(names[0]))
			for _, n := range names[1:] {
				if err == nil {
					b, err = b.CreateBucketIfNotExists([]byte(n))
				}
			}
			for k, v := range e[p] {
				if err == nil {
					err = b.Put([]byte(k), v)
				}
			}
			return err
		})
		if err != nil {
			return err
		}
	}
	return db.Sync()
}

func run(out string, r io.Reader) error {
	var in input
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		return fmt.Errorf("parse input: %v", err)
	}
	if in.UpdatedAt.IsZero() {
		return fmt.Errorf("updated_at is required")
	}
	updated := in.UpdatedAt.UTC()
	meta := metadata{Version: 2, NextUpdate: updated.AddDate(10, 0, 0), UpdatedAt: updated, DownloadedAt: updated}
	if in.NextUpdate != nil {
		meta.NextUpdate = in.NextUpdate.UTC()
	}

	e, vulns := entries{}, map[string]*dbVulnerability{}
	for _, a := range in.Advisories {
		if err := addAdvisory(e, vulns, a); err != nil {
			return err
		}
	}
	for id, v := range vulns {
		e.put(id, v, "vulnerability")
	}

	dir := filepath.Join(out, "db")
	dbPath := filepath.Join(dir, "trivy.db")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	os.Remove(dbPath) // always start from an empty file
	db, err := bolt.Open(dbPath, 0o644, &bolt.Options{Timeout: 5 * time.Second, NoSync: true})
	if err != nil {
		return err
	}
	err = write(db, e)
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(dbPath)
		return err
	}
	mj, _ := json.Marshal(meta)
	return os.WriteFile(filepath.Join(dir, "metadata.json"), mj, 0o644)
}

func main() {
	if len(os.Args) < 2 || len(os.Args) > 3 {
		fmt.Fprintln(os.Stderr, "usage: writer OUT_DIR [INPUT.json | -]")
		os.Exit(2)
	}
	var err error
	r := io.Reader(os.Stdin)
	if len(os.Args) == 3 && os.Args[2] != "-" {
		r, err = os.Open(os.Args[2])
	}
	if err == nil {
		err = run(os.Args[1], r)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "writer:", err)
		os.Exit(1)
	}
}
