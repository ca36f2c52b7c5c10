// Command fsbench is a native load generator for the Foreshard broker.
//
// It speaks the broker's gRPC API (service foreshard.v1.Broker, see
// broker-image/proto/foreshard/v1/broker.proto) without generated code: PublishRequest is
// encoded by hand with protowire, the fields of PublishResponse it needs are decoded the same
// way, and grpc-go carries the bytes through a raw codec. The point is to measure the broker,
// not a Python client: a Python gRPC ping-pong tops out near 1,400 calls/s on a small VM.
//
// Usage:
//
//	fsbench pipelined --endpoint HOST:PORT [--streams 2] [--batch 1000] [--window 4] [--seconds 4]
//	fsbench pingpong  --endpoint HOST:PORT [--seconds 4] [--unary]
//	fsbench latency   --endpoint HOST:PORT --rate MSGS_PER_S [--batch 1000] [--seconds 4]
//
// Each mode prints ONE JSON line on stdout. A `failure` outcome, a refused message or a
// duplicate answer ends the run with exit code 1 and the reason on stderr.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protowire"
)

const (
	methodPublish      = "/foreshard.v1.Broker/Publish"
	methodPublishBatch = "/foreshard.v1.Broker/PublishBatch"
)

// ---------------------------------------------------------------- wire

// rawCodec hands pre-encoded request bytes to grpc as they are and decodes responses in place.
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" } // the content-subtype the broker expects

func (rawCodec) Marshal(v any) ([]byte, error) {
	switch m := v.(type) {
	case []byte:
		return m, nil
	case *[]byte:
		return *m, nil
	}
	return nil, fmt.Errorf("rawCodec: cannot marshal %T", v)
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	r, ok := v.(*response)
	if !ok {
		return fmt.Errorf("rawCodec: cannot unmarshal into %T", v)
	}
	return r.decode(data) // data is only valid during this call: decode, keep nothing
}

// response holds the PublishResponse fields fsbench acts on.
type response struct {
	sequence    uint64
	hasStored   bool
	firstOffset uint64
	count       uint64
	duplicate   bool
	hasFailure  bool
	failCode    int64
	failMessage string
	refusals    int
}

// field is one decoded protobuf field: varint holds a varint's value, bytes a length-delimited one.
type field struct {
	num    protowire.Number
	typ    protowire.Type
	varint uint64
	bytes  []byte
}

// eachField walks the fields of one encoded message, in order, skipping no malformed input.
func eachField(b []byte, visit func(field) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		f, m := field{num: num, typ: typ}, 0
		switch typ {
		case protowire.VarintType:
			f.varint, m = protowire.ConsumeVarint(b)
		case protowire.BytesType:
			f.bytes, m = protowire.ConsumeBytes(b)
		default:
			m = protowire.ConsumeFieldValue(num, typ, b)
		}
		if m < 0 {
			return protowire.ParseError(m)
		}
		b = b[m:]
		if err := visit(f); err != nil {
			return err
		}
	}
	return nil
}

func (r *response) decode(b []byte) error {
	*r = response{}
	return eachField(b, func(f field) error {
		switch {
		case f.num == 1 && f.typ == protowire.VarintType: // sequence
			r.sequence = f.varint
		case f.num == 2 && f.typ == protowire.BytesType: // stored
			r.hasStored = true
			return eachField(f.bytes, r.storedField)
		case f.num == 5 && f.typ == protowire.BytesType: // failure
			r.hasFailure = true
			return eachField(f.bytes, r.failureField)
		case f.num == 6 && f.typ == protowire.BytesType: // refusals: only counted
			r.refusals++
		}
		return nil
	})
}

func (r *response) storedField(f field) error {
	if f.typ == protowire.VarintType {
		switch f.num {
		case 1:
			r.firstOffset = f.varint
		case 2:
			r.count = f.varint
		case 3:
			r.duplicate = f.varint != 0
		}
	}
	return nil
}

func (r *response) failureField(f field) error {
	switch {
	case f.num == 1 && f.typ == protowire.VarintType:
		r.failCode = int64(int32(f.varint))
	case f.num == 2 && f.typ == protowire.BytesType:
		r.failMessage = string(f.bytes)
	}
	return nil
}

// check turns an answer that is not a clean store of `want` messages into an error.
func (r *response) check(wantSequence uint64, want int) error {
	switch {
	case r.hasFailure:
		return fmt.Errorf("sequence %d: failure code %d: %s", r.sequence, r.failCode, r.failMessage)
	case !r.hasStored:
		return fmt.Errorf("sequence %d: response has neither stored nor failure", r.sequence)
	case r.sequence != wantSequence:
		return fmt.Errorf("response for sequence %d, expected %d (answers out of order)", r.sequence, wantSequence)
	case r.duplicate:
		return fmt.Errorf("sequence %d answered as a duplicate (producer id reused?)", r.sequence)
	case r.refusals > 0:
		return fmt.Errorf("sequence %d: %d messages refused (MOVED/PAUSED): not a single-owner broker", r.sequence, r.refusals)
	case int(r.count) != want:
		return fmt.Errorf("sequence %d: stored %d of %d messages", r.sequence, r.count, want)
	}
	return nil
}

// batch is a PublishRequest encoded once without its sequence; field order does not matter in
// protobuf, so each send appends field 2 to a copy of the fixed part.
type batch struct {
	fixed []byte
	size  int
}

func newBatch(producer string, keys []string, payload []byte, size, keyOffset int) batch {
	var b []byte
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendString(b, producer)
	for i := 0; i < size; i++ {
		b = protowire.AppendTag(b, 3, protowire.BytesType)
		b = protowire.AppendString(b, keys[(keyOffset+i)%len(keys)])
	}
	for i := 0; i < size; i++ {
		b = protowire.AppendTag(b, 4, protowire.BytesType)
		b = protowire.AppendBytes(b, payload)
	}
	return batch{fixed: b, size: size}
}

// encode returns a fresh buffer: grpc may still hold a sent message after SendMsg returns.
func (b batch) encode(sequence uint64) []byte {
	out := make([]byte, len(b.fixed), len(b.fixed)+11)
	copy(out, b.fixed)
	out = protowire.AppendTag(out, 2, protowire.VarintType)
	return protowire.AppendVarint(out, sequence)
}

// ---------------------------------------------------------------- common

type options struct {
	endpoint string
	seconds  float64
	streams  int
	batch    int
	window   int
	rate     float64
	unary    bool
	producer string
	keys     int
	size     int
}

func dial(endpoint string) (*grpc.ClientConn, error) {
	return grpc.NewClient(endpoint,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})),
		grpc.WithInitialWindowSize(1<<24),
		grpc.WithInitialConnWindowSize(1<<24),
		grpc.WithWriteBufferSize(1<<20),
		grpc.WithReadBufferSize(1<<20),
	)
}

func openPublish(ctx context.Context, conn *grpc.ClientConn) (grpc.ClientStream, error) {
	desc := &grpc.StreamDesc{StreamName: "Publish", ServerStreams: true, ClientStreams: true}
	return conn.NewStream(ctx, desc, methodPublish)
}

func keyNames(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("key-%d", i)
	}
	return keys
}

// payloadBytes: `size` printable bytes (hex of a fixed pseudo-random sequence), like the Python bench.
func payloadBytes(size int) []byte {
	const hex = "0123456789abcdef"
	out := make([]byte, size)
	x := uint64(0x9E3779B97F4A7C15)
	for i := range out {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		out[i] = hex[x&15]
	}
	return out
}

func percentile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	i := int(q * float64(len(sorted)))
	return sorted[min(len(sorted)-1, i)]
}

func round(v float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(v*p) / p
}

// ---------------------------------------------------------------- pipelined

// pipelined: S streams (each on its own connection, with its own producer id), W batches of B
// messages outstanding per stream, for `seconds`; the rate counts what the broker says it stored.
func pipelined(o options) (map[string]any, error) {
	keys, payload := keyNames(o.keys), payloadBytes(o.size)
	var stored, batches atomic.Uint64
	var firstErr error
	var once sync.Once
	fail := func(err error) { once.Do(func() { firstErr = err }) }

	type producer struct {
		conn   *grpc.ClientConn
		stream grpc.ClientStream
		batch  batch
		ctx    context.Context
		cancel context.CancelFunc
	}
	producers := make([]producer, o.streams)
	for i := range producers {
		conn, err := dial(o.endpoint)
		if err != nil {
			return nil, err
		}
		ctx, cancel := context.WithCancel(context.Background())
		stream, err := openPublish(ctx, conn)
		if err != nil {
			cancel()
			return nil, err
		}
		id := fmt.Sprintf("%s-%d", o.producer, i)
		producers[i] = producer{conn, stream, newBatch(id, keys, payload, o.batch, i*o.keys/o.streams), ctx, cancel}
	}
	defer func() {
		for _, p := range producers {
			p.cancel()
			p.conn.Close()
		}
	}()

	var wg sync.WaitGroup
	started := time.Now()
	stop := started.Add(time.Duration(o.seconds * float64(time.Second)))
	for _, p := range producers {
		window := make(chan struct{}, o.window)
		sent := make(chan uint64, o.window) // sequences in flight, in send order
		wg.Add(2)
		go func() { // sender
			defer wg.Done()
			defer close(sent)
			for seq := uint64(1); time.Now().Before(stop); seq++ {
				select {
				case window <- struct{}{}:
				case <-p.ctx.Done():
					return
				}
				if err := p.stream.SendMsg(p.batch.encode(seq)); err != nil {
					fail(fmt.Errorf("send: %w", err))
					p.cancel()
					return
				}
				sent <- seq
			}
			if err := p.stream.CloseSend(); err != nil {
				fail(fmt.Errorf("close send: %w", err))
			}
		}()
		go func() { // receiver
			defer wg.Done()
			var r response
			for seq := range sent {
				if err := p.stream.RecvMsg(&r); err != nil {
					fail(fmt.Errorf("receive: %w", err))
					p.cancel()
					return
				}
				if err := r.check(seq, p.batch.size); err != nil {
					fail(err)
					p.cancel()
					return
				}
				stored.Add(r.count)
				batches.Add(1)
				<-window
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(started).Seconds()
	if firstErr != nil {
		return nil, firstErr
	}
	return map[string]any{
		"streams": o.streams, "batch": o.batch, "window": o.window,
		"batches": batches.Load(), "stored": stored.Load(),
		"elapsed_s": round(elapsed, 3),
		"msgs_s":    round(float64(stored.Load())/elapsed, 1),
	}, nil
}

// ---------------------------------------------------------------- pingpong

// pingpong: one message per request, the next sent only after the answer (a single unpipelined
// client); on one Publish stream, or with --unary one PublishBatch call each.
func pingpong(o options) (map[string]any, error) {
	keys, payload := keyNames(o.keys), payloadBytes(o.size)
	conn, err := dial(o.endpoint)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stream grpc.ClientStream
	if !o.unary {
		if stream, err = openPublish(ctx, conn); err != nil {
			return nil, err
		}
	}
	samples := make([]float64, 0, 1<<16)
	var r response
	started := time.Now()
	stop := started.Add(time.Duration(o.seconds * float64(time.Second)))
	var seq uint64
	for time.Now().Before(stop) {
		seq++
		request := newBatch(o.producer, keys, payload, 1, int(seq-1)%o.keys).encode(seq)
		t0 := time.Now()
		if o.unary {
			err = conn.Invoke(ctx, methodPublishBatch, request, &r)
		} else if err = stream.SendMsg(request); err == nil {
			err = stream.RecvMsg(&r)
		}
		if err != nil {
			return nil, fmt.Errorf("sequence %d: %w", seq, err)
		}
		samples = append(samples, float64(time.Since(t0).Nanoseconds())/1e3)
		if err := r.check(seq, 1); err != nil {
			return nil, err
		}
	}
	elapsed := time.Since(started).Seconds()
	if stream != nil {
		if err := stream.CloseSend(); err != nil {
			return nil, err
		}
		if err := stream.RecvMsg(&r); !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("publish stream did not end cleanly: %v", err)
		}
	}
	slices.Sort(samples)
	return map[string]any{
		"unary": o.unary, "stored": seq, "elapsed_s": round(elapsed, 3),
		"msgs_s": round(float64(seq)/elapsed, 1),
		"p50_us": round(percentile(samples, 0.5), 1),
		"p99_us": round(percentile(samples, 0.99), 1),
	}, nil
}

// ---------------------------------------------------------------- latency

// latency: open loop on one Publish stream, B-message batches sent on a fixed schedule that
// makes `rate` msgs/s, whatever the answers do; publish->response time of every batch.
func latency(o options) (map[string]any, error) {
	if o.rate <= 0 {
		return nil, errors.New("latency needs --rate > 0")
	}
	keys, payload := keyNames(o.keys), payloadBytes(o.size)
	conn, err := dial(o.endpoint)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := openPublish(ctx, conn)
	if err != nil {
		return nil, err
	}
	b := newBatch(o.producer, keys, payload, o.batch, 0)
	interval := time.Duration(float64(o.batch) / o.rate * float64(time.Second))
	count := int(o.seconds * o.rate / float64(o.batch))
	if count < 1 {
		return nil, errors.New("latency: --seconds * --rate is less than one batch")
	}
	sentAt := make([]atomic.Int64, count+1) // ns since begin: stored before SendMsg, read after the answer
	latencies := make([]float64, 0, count)
	var stored uint64
	done := make(chan error, 1)
	begin := time.Now()
	go func() {
		var r response
		for seq := uint64(1); seq <= uint64(count); seq++ {
			if err := stream.RecvMsg(&r); err != nil {
				done <- fmt.Errorf("receive: %w", err)
				cancel()
				return
			}
			at := time.Since(begin).Nanoseconds()
			if err := r.check(seq, o.batch); err != nil {
				done <- err
				cancel()
				return
			}
			latencies = append(latencies, float64(at-sentAt[seq].Load())/1e6)
			stored += r.count
		}
		done <- nil
	}()
	var lateMax time.Duration
	for seq := 1; seq <= count; seq++ {
		due := begin.Add(time.Duration(seq) * interval)
		if wait := time.Until(due); wait > 0 {
			time.Sleep(wait)
		} else if -wait > lateMax {
			lateMax = -wait
		}
		sentAt[seq].Store(time.Since(begin).Nanoseconds())
		if err := stream.SendMsg(b.encode(uint64(seq))); err != nil {
			return nil, fmt.Errorf("send: %w", err)
		}
	}
	if err := <-done; err != nil {
		return nil, err
	}
	elapsed := time.Since(begin).Seconds()
	if err := stream.CloseSend(); err != nil {
		return nil, err
	}
	slices.Sort(latencies)
	return map[string]any{
		"batch": o.batch, "target_msgs_s": o.rate, "batches": count, "stored": stored,
		"elapsed_s":        round(elapsed, 3),
		"achieved_msgs_s":  round(float64(stored)/elapsed, 1),
		"p50_ms":           round(percentile(latencies, 0.5), 3),
		"p99_ms":           round(percentile(latencies, 0.99), 3),
		"max_ms":           round(latencies[len(latencies)-1], 3),
		"send_late_max_ms": round(float64(lateMax.Nanoseconds())/1e6, 3),
	}, nil
}

// ---------------------------------------------------------------- main

func main() {
	modes := map[string]func(options) (map[string]any, error){
		"pipelined": pipelined, "pingpong": pingpong, "latency": latency,
	}
	if len(os.Args) < 2 || modes[os.Args[1]] == nil {
		fmt.Fprintln(os.Stderr, "usage: fsbench pipelined|pingpong|latency --endpoint HOST:PORT [flags]; fsbench MODE -h for flags")
		os.Exit(2)
	}
	mode := os.Args[1]
	var o options
	fs := flag.NewFlagSet("fsbench "+mode, flag.ExitOnError)
	fs.StringVar(&o.endpoint, "endpoint", "", "broker gRPC address HOST:PORT (required)")
	fs.Float64Var(&o.seconds, "seconds", 4, "duration of the run in seconds")
	fs.IntVar(&o.streams, "streams", 2, "pipelined: Publish streams, one connection and producer id each")
	fs.IntVar(&o.batch, "batch", 1000, "pipelined, latency: messages per batch")
	fs.IntVar(&o.window, "window", 4, "pipelined: batches outstanding per stream")
	fs.Float64Var(&o.rate, "rate", 0, "latency: target msgs/s (open loop)")
	fs.BoolVar(&o.unary, "unary", false, "pingpong: unary PublishBatch calls instead of one Publish stream")
	fs.StringVar(&o.producer, "producer", fmt.Sprintf("fsbench-%d-%d", os.Getpid(), time.Now().UnixNano()),
		"producer id (pipelined appends -<stream>); fresh by default so sequences start at 1")
	fs.IntVar(&o.keys, "keys", 1000, "distinct keys key-0..key-N-1")
	fs.IntVar(&o.size, "payload-size", 256, "payload bytes per message")
	_ = fs.Parse(os.Args[2:])
	if o.endpoint == "" || o.seconds <= 0 || o.streams < 1 || o.batch < 1 || o.window < 1 || o.keys < 1 {
		fmt.Fprintln(os.Stderr, "fsbench: --endpoint is required; --seconds, --streams, --batch, --window, --keys must be positive")
		os.Exit(2)
	}
	result, err := modes[mode](o)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fsbench %s: %v\n", mode, err)
		os.Exit(1)
	}
	result["mode"] = mode
	line, err := json.Marshal(result)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(string(line))
}
