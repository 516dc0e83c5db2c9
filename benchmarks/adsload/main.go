// Command adsload is the scale bench's load generator: many xDS clients in
// one process, each one ADS stream with a node of its own on a connection of
// its own, subscribing as the proxyless-mesh library does (one LDS name, then
// RDS, CDS and EDS by reference, ACKing every response). It speaks State of
// the World or, with -delta, Delta (incremental) xDS, and on "reconnect" it
// resumes: SotW with its last versions (the server re-sends everything),
// Delta with initial_resource_versions (the server sends what changed).
//
// Written in Go so that the clients' own CPU does not bound what the bench
// measures of the control plane (the Python load clients cost 160-220 µs per
// stream per push). Driven over stdin/stdout, one JSON object per line, the
// protocol of benchmarks/xds_load_clients.py, plus "reconnect ADDR":
//
//	"go"              connect; answer {"synced", "last", "times", "resets", "why"}
//	"arm"             remember each client's route version; {"armed": n}
//	"wait"            until each ACKed another route version; {"acks": [t...]}
//	"reconnect ADDR"  every stream ends and resumes against ADDR; answer
//	                  {"resynced", "last", "bytes", "resources"} once each saw
//	                  a new route version (and, over SotW, an answer for every
//	                  type it follows): the bench changes a route meanwhile
//	"quit"
//
// Times are CLOCK_MONOTONIC seconds, the clock of Python's time.monotonic().
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	clusterpb "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerpb "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routepb "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmpb "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	adspb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

const (
	typePrefix = "type.googleapis.com/envoy.config."
	lds        = typePrefix + "listener.v3.Listener"
	rds        = typePrefix + "route.v3.RouteConfiguration"
	cds        = typePrefix + "cluster.v3.Cluster"
	eds        = typePrefix + "endpoint.v3.ClusterLoadAssignment"
)

var (
	order    = []string{lds, rds, cds, eds}
	nextType = map[string]string{lds: rds, rds: cds, cds: eds}
)

func now() float64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return float64(ts.Sec) + float64(ts.Nsec)/1e9
}

// refsCache: the names of the next type one serialized resource refers to,
// decoded once per distinct resource (thousands of streams get the same bytes).
var refsCache sync.Map

func references(res *anypb.Any) []string {
	key := res.TypeUrl + "\x00" + string(res.Value)
	if found, ok := refsCache.Load(key); ok {
		return found.([]string)
	}
	set := map[string]bool{}
	switch res.TypeUrl {
	case lds:
		var l listenerpb.Listener
		var h hcmpb.HttpConnectionManager
		if proto.Unmarshal(res.Value, &l) == nil && l.ApiListener != nil &&
			l.ApiListener.ApiListener.UnmarshalTo(&h) == nil {
			if r := h.GetRds(); r != nil {
				set[r.RouteConfigName] = true
			}
		}
	case rds:
		var r routepb.RouteConfiguration
		if proto.Unmarshal(res.Value, &r) == nil {
			for _, vh := range r.VirtualHosts {
				for _, route := range vh.Routes {
					if a := route.GetRoute(); a != nil {
						if c := a.GetCluster(); c != "" {
							set[c] = true
						}
						for _, w := range a.GetWeightedClusters().GetClusters() {
							set[w.Name] = true
						}
					}
				}
			}
		}
	case cds:
		var c clusterpb.Cluster
		if proto.Unmarshal(res.Value, &c) == nil {
			name := c.GetEdsClusterConfig().GetServiceName()
			if name == "" {
				name = c.Name
			}
			set[name] = true
		}
	}
	names := make([]string, 0, len(set))
	for n := range set {
		names = append(names, n)
	}
	sort.Strings(names)
	refsCache.Store(key, names)
	return names
}

func sameNames(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// client is one xDS client: one stream at a time, resumed on "reconnect".
type client struct {
	id       string
	names    map[string][]string            // per type: subscribed names (sorted)
	versions map[string]string              // SotW: per type, last version
	nonces   map[string]string              // SotW: per type, last nonce
	held     map[string]map[string]string   // Delta: per type, name -> version
	refs     map[string]map[string][]string // per type: resource name -> its references
	route    atomic.Value                   // string: the latest route version seen
}

type run struct {
	delta       bool
	authorities []string
	source      *net.TCPAddr // nil: the system picks
	clients     []*client
	stop        context.Context

	mu        sync.Mutex
	phase     string // "sync", "change", "resync"
	armed     map[*client]string
	doneAt    map[*client]float64
	answered  map[*client]map[string]bool
	rerouted  map[*client]bool // resync: saw a route version other than the armed one
	bytes     int64
	resources int64
	resets    int64
	why       string
}

func (r *run) mark(c *client, at float64) {
	if _, ok := r.doneAt[c]; !ok {
		r.doneAt[c] = at
	}
}

func (r *run) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.doneAt)
}

// serve keeps one client connected to addr until stop or a new address.
func (r *run) serve(ctx context.Context, c *client, addr string) {
	for ctx.Err() == nil {
		err := r.stream(ctx, c, addr)
		if ctx.Err() != nil {
			return
		}
		r.mu.Lock()
		r.resets++
		if r.why == "" && err != nil {
			r.why = err.Error()
		}
		r.mu.Unlock()
		time.Sleep(time.Duration(100+rand.Intn(900)) * time.Millisecond)
	}
}

func (r *run) stream(ctx context.Context, c *client, addr string) error {
	options := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if r.source != nil { // beyond one source address's ~28,000 ephemeral ports
		// IP_BIND_ADDRESS_NO_PORT: the port is chosen at connect(), unique per
		// destination, not at bind(), where every port still in TIME_WAIT
		// from the previous run's 10,000 connections is taken: without it a
		// storm right after another spent seconds of CPU searching for ports.
		dialer := net.Dialer{LocalAddr: r.source, Control: func(_, _ string, raw syscall.RawConn) error {
			var set error
			if err := raw.Control(func(fd uintptr) {
				set = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
			}); err != nil {
				return err
			}
			return set
		}}
		options = append(options, grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) {
			return dialer.DialContext(ctx, "tcp", a)
		}))
	}
	conn, err := grpc.NewClient(addr, options...)
	if err != nil {
		return err
	}
	defer conn.Close()
	ads := adspb.NewAggregatedDiscoveryServiceClient(conn)
	node := &corepb.Node{Id: c.id, Cluster: "bench", UserAgentName: "proxyless-mesh"}
	if r.delta {
		s, err := ads.DeltaAggregatedResources(ctx, grpc.WaitForReady(true))
		if err != nil {
			return err
		}
		return r.followDelta(c, s, node)
	}
	s, err := ads.StreamAggregatedResources(ctx, grpc.WaitForReady(true))
	if err != nil {
		return err
	}
	return r.followSotw(c, s, node)
}

func (r *run) received(c *client, typeURL string, size, resources int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.bytes += int64(size)
	r.resources += int64(resources)
	if r.phase == "resync" {
		got := r.answered[c]
		if got == nil {
			got = map[string]bool{}
			r.answered[c] = got
		}
		got[typeURL] = true
		r.maybeResynced(c)
	}
}

// maybeResynced: a resumed client is done once it saw the route that
// changed while the control plane was down and, over SotW, an answer for
// every type it follows (Delta answers a resumed type only if it changed).
func (r *run) maybeResynced(c *client) {
	if r.rerouted[c] && (r.delta || len(r.answered[c]) == len(c.names)) {
		r.mark(c, now())
	}
}

func (r *run) routeSeen(c *client, version string) {
	c.route.Store(version)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.armed[c] == version {
		return
	}
	switch r.phase {
	case "change":
		r.mark(c, now())
	case "resync":
		r.rerouted[c] = true
		r.maybeResynced(c)
	}
}

func (r *run) endpointsSeen(c *client) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.phase == "sync" {
		r.mark(c, now())
	}
}

func (r *run) followSotw(c *client, s adspb.AggregatedDiscoveryService_StreamAggregatedResourcesClient, node *corepb.Node) error {
	first := true
	send := func(typeURL string) error {
		req := &adspb.DiscoveryRequest{
			TypeUrl: typeURL, ResourceNames: c.names[typeURL],
			VersionInfo: c.versions[typeURL], ResponseNonce: c.nonces[typeURL],
		}
		if first {
			req.Node, first = node, false
		}
		return s.Send(req)
	}
	if len(c.names) == 0 {
		c.names[lds] = r.authorities
	}
	for k := range c.nonces {
		delete(c.nonces, k) // nonces are per stream
	}
	for _, t := range order {
		if _, ok := c.names[t]; ok {
			if err := send(t); err != nil {
				return err
			}
		}
	}
	for {
		resp, err := s.Recv()
		if err != nil {
			return err
		}
		t := resp.TypeUrl
		c.versions[t], c.nonces[t] = resp.VersionInfo, resp.Nonce
		if err := send(t); err != nil { // the ACK
			return err
		}
		r.received(c, t, proto.Size(resp), len(resp.Resources))
		switch t {
		case rds:
			r.routeSeen(c, resp.VersionInfo)
		case eds:
			if len(resp.Resources) > 0 {
				r.endpointsSeen(c)
			}
		}
		next, ok := nextType[t]
		if !ok {
			continue
		}
		set := map[string]bool{}
		for _, res := range resp.Resources {
			for _, n := range references(res) {
				set[n] = true
			}
		}
		wanted := sortedKeys(set)
		if len(wanted) > 0 && !sameNames(wanted, c.names[next]) {
			c.names[next] = wanted
			if err := send(next); err != nil {
				return err
			}
		}
	}
}

func (r *run) followDelta(c *client, s adspb.AggregatedDiscoveryService_DeltaAggregatedResourcesClient, node *corepb.Node) error {
	first := true
	send := func(req *adspb.DeltaDiscoveryRequest) error {
		if first {
			req.Node, first = node, false
		}
		return s.Send(req)
	}
	if len(c.names) == 0 {
		c.names[lds] = r.authorities
	}
	for _, t := range order { // resume: everything we follow, with what we hold
		if names, ok := c.names[t]; ok {
			req := &adspb.DeltaDiscoveryRequest{TypeUrl: t, ResourceNamesSubscribe: names}
			if len(c.held[t]) > 0 {
				req.InitialResourceVersions = c.held[t]
			}
			if err := send(req); err != nil {
				return err
			}
		}
	}
	for {
		resp, err := s.Recv()
		if err != nil {
			return err
		}
		t := resp.TypeUrl
		held, refs := c.held[t], c.refs[t]
		if held == nil {
			held, refs = map[string]string{}, map[string][]string{}
			c.held[t], c.refs[t] = held, refs
		}
		for _, res := range resp.Resources {
			held[res.Name] = res.Version
			refs[res.Name] = references(res.Resource)
		}
		for _, name := range resp.RemovedResources {
			delete(held, name)
			delete(refs, name)
		}
		if err := send(&adspb.DeltaDiscoveryRequest{TypeUrl: t, ResponseNonce: resp.Nonce}); err != nil {
			return err
		}
		r.received(c, t, proto.Size(resp), len(resp.Resources))
		switch t {
		case rds:
			if len(resp.Resources) > 0 {
				r.routeSeen(c, resp.SystemVersionInfo)
			}
		case eds:
			if len(held) > 0 {
				r.endpointsSeen(c)
			}
		}
		next, ok := nextType[t]
		if !ok {
			continue
		}
		set := map[string]bool{}
		for _, names := range refs {
			for _, n := range names {
				set[n] = true
			}
		}
		wanted := sortedKeys(set)
		old := c.names[next]
		if sameNames(wanted, old) {
			continue
		}
		c.names[next] = wanted
		req := &adspb.DeltaDiscoveryRequest{
			TypeUrl: next, ResourceNamesSubscribe: minus(wanted, old), ResourceNamesUnsubscribe: minus(old, wanted),
		}
		if err := send(req); err != nil {
			return err
		}
	}
}

func sortedKeys(set map[string]bool) []string {
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func minus(a, b []string) []string {
	drop := map[string]bool{}
	for _, n := range b {
		drop[n] = true
	}
	var out []string
	for _, n := range a {
		if !drop[n] {
			out = append(out, n)
		}
	}
	return out
}

func reply(v any) {
	out, _ := json.Marshal(v)
	fmt.Println(string(out))
}

// waitAll polls until `count` clients are done or the timeout passes.
func (r *run) waitAll(timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for r.count() < len(r.clients) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
}

func (r *run) begin(phase string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.phase = phase
	r.doneAt = map[*client]float64{}
	r.answered = map[*client]map[string]bool{}
	r.rerouted = map[*client]bool{}
	r.bytes, r.resources = 0, 0
	if phase == "change" || phase == "resync" {
		r.armed = map[*client]string{}
		for _, c := range r.clients {
			v, _ := c.route.Load().(string)
			r.armed[c] = v
		}
	}
}

func (r *run) times() []float64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]float64, 0, len(r.doneAt))
	for _, t := range r.doneAt {
		out = append(out, t)
	}
	return out
}

func maxOf(ts []float64) float64 {
	m := 0.0
	for _, t := range ts {
		if t > m {
			m = t
		}
	}
	return m
}

func main() {
	xds := flag.String("xds", "", "HOST:PORT of the ADS server")
	count := flag.Int("count", 1, "clients")
	authority := flag.String("authority", "", "the LDS names to ask for, comma-separated")
	prefix := flag.String("id-prefix", "load-", "node id prefix")
	timeoutS := flag.Float64("timeout", 120, "seconds to wait for each phase")
	delta := flag.Bool("delta", false, "speak Delta (incremental) xDS")
	source := flag.String("source", "", "local IP to connect from (e.g. 127.0.0.2)")
	flag.Parse()
	timeout := time.Duration(*timeoutS * float64(time.Second))
	names := strings.Split(*authority, ",")
	sort.Strings(names)
	r := &run{delta: *delta, authorities: names}
	if *source != "" {
		r.source = &net.TCPAddr{IP: net.ParseIP(*source)}
	}
	for i := 0; i < *count; i++ {
		r.clients = append(r.clients, &client{
			id: fmt.Sprintf("%s%d", *prefix, i), names: map[string][]string{},
			versions: map[string]string{}, nonces: map[string]string{},
			held: map[string]map[string]string{}, refs: map[string]map[string][]string{},
		})
	}
	var cancel context.CancelFunc = func() {}
	var group sync.WaitGroup
	start := func(addr string) {
		var ctx context.Context
		ctx, cancel = context.WithCancel(context.Background())
		for _, c := range r.clients {
			group.Add(1)
			go func(c *client) {
				defer group.Done()
				r.serve(ctx, c, addr)
			}(c)
		}
	}
	reply(map[string]bool{"ready": true})
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		command := strings.Fields(in.Text())
		if len(command) == 0 || command[0] == "quit" {
			break
		}
		switch command[0] {
		case "go":
			r.begin("sync")
			start(*xds)
			r.waitAll(timeout)
			ts := r.times()
			reply(map[string]any{"synced": len(ts), "last": maxOf(ts), "times": ts, "resets": r.resets, "why": r.why})
		case "arm":
			r.begin("change")
			reply(map[string]int{"armed": len(r.clients)})
		case "wait":
			r.waitAll(timeout)
			reply(map[string]any{"acks": r.times(), "resets": r.resets})
		case "reconnect":
			cancel()
			group.Wait()
			r.begin("resync")
			start(command[1])
			r.waitAll(timeout)
			ts := r.times()
			reply(map[string]any{
				"resynced": len(ts), "last": maxOf(ts), "bytes": r.bytes, "resources": r.resources,
			})
		}
	}
	cancel()
	group.Wait()
}
