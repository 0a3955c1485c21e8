// Command mockupstream serves the mock OpenAI-compatible upstream of package
// bench/mock on a local address, for benchmarks and manual tests.
//
//	go run ./bench/mockupstream -listen 127.0.0.1:9901 -chunks 16 -chunk-delay 0 -answer short
//
// It prints "listening on ADDR" once it accepts connections and stops on
// SIGINT or SIGTERM.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/gatewayz/caddy-gatewayz/bench/mock"
)

func main() {
	var (
		listen     = flag.String("listen", "127.0.0.1:9901", "address to listen on")
		model      = flag.String("model", "mock-model", "model reported when the request names none")
		prompt     = flag.Int("prompt-tokens", 12, "usage.prompt_tokens")
		completion = flag.Int("completion-tokens", 20, "usage.completion_tokens of JSON answers")
		chunks     = flag.Int("chunks", 16, "content chunks per stream")
		chunkDelay = flag.Duration("chunk-delay", 0, "pause between stream chunks")
		delay      = flag.Duration("delay", 0, "wait before response headers")
		status     = flag.Int("status", 0, "answer every inference request with this status")
		answer     = flag.String("answer", "tiny", "chat completion answer: tiny, short, long or tool (X-Mock-Answer overrides it per request)")
	)
	flag.Parse()
	a, err := mock.ParseAnswer(*answer)
	if err != nil {
		log.Fatal(err)
	}
	h := mock.NewHandler(mock.Options{
		Model: *model, PromptTokens: *prompt, CompletionTokens: *completion,
		StreamChunks: *chunks, ChunkDelay: *chunkDelay, Delay: *delay, Status: *status, Answer: a,
	})
	if err := Serve(context.Background(), *listen, h, os.Stdout); err != nil {
		log.Fatal(err)
	}
}

// Serve listens on addr and serves h until ctx is done or a signal arrives.
func Serve(ctx context.Context, addr string, h http.Handler, out *os.File) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ErrorLog: log.New(discard{}, "", 0)}
	fmt.Fprintf(out, "listening on %s\n", ln.Addr())
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		return nil
	}
}

// discard drops net/http's per-connection error logs (aborted streams are
// expected here).
type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
