// Command etcd runs etcd's own main (go.etcd.io/etcd/server/v3/etcdmain), for the Kubernetes tests.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
