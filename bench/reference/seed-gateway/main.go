// The seed article's Go gateway, as a reference for bench/gateway-overhead.ts: gin in front of
// httputil.ReverseProxy, round-robin over a model's replicas with an atomic counter, and a new
// NewSingleHostReverseProxy for every request, as the article writes it (reference/seed-article.txt,
// "Go API网关"). Two changes so that the benchmark can call it like the other targets: the model comes
// from the x-model header (the article reads a route parameter that its OpenAI paths do not have; the
// one registered model is the default), and the listener also takes HTTP/2 without TLS (h2c), which the
// benchmark's 10,000-stream memory phase needs to stay within the file-descriptor limit.
//
// usage: seed-gateway -listen 127.0.0.1:0 -model m http://127.0.0.1:8001 http://127.0.0.1:8002 ...
// It prints "seed-gateway: serving at http://HOST:PORT" once it listens.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"sync/atomic"

	"github.com/gin-gonic/gin"
)

type ModelRouter struct {
	endpoints map[string][]*url.URL
	counters  map[string]*atomic.Uint64
	fallback  string
}

func NewModelRouter() *ModelRouter {
	return &ModelRouter{
		endpoints: make(map[string][]*url.URL),
		counters:  make(map[string]*atomic.Uint64),
	}
}

func (r *ModelRouter) RegisterModel(model string, urls ...string) {
	for _, u := range urls {
		parsed, err := url.Parse(u)
		if err != nil {
			log.Fatalf("replica %q: %v", u, err)
		}
		r.endpoints[model] = append(r.endpoints[model], parsed)
	}
	r.counters[model] = &atomic.Uint64{}
	r.fallback = model
}

func (r *ModelRouter) ProxyHandler(c *gin.Context) {
	model := c.GetHeader("x-model")
	if model == "" {
		model = r.fallback
	}
	endpoints, ok := r.endpoints[model]
	if !ok {
		c.JSON(http.StatusNotFound, gin.H{"error": "model not found"})
		return
	}
	counter := r.counters[model]
	idx := counter.Add(1) % uint64(len(endpoints))
	target := endpoints[idx]
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.ServeHTTP(c.Writer, c.Request)
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "listen address")
	model := flag.String("model", "m", "the model's name")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: seed-gateway [-listen ADDR] [-model NAME] REPLICA_URL...")
		os.Exit(2)
	}
	gin.SetMode(gin.ReleaseMode)
	router := NewModelRouter()
	router.RegisterModel(*model, flag.Args()...)
	r := gin.New() // no request logging, as a benchmark target
	r.POST("/v1/*path", router.ProxyHandler)

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	server := &http.Server{Handler: r, Protocols: new(http.Protocols)}
	server.Protocols.SetHTTP1(true)
	server.Protocols.SetUnencryptedHTTP2(true)
	fmt.Printf("seed-gateway: serving at http://%s\n", ln.Addr())
	log.Fatal(server.Serve(ln))
}
