// A minimal OpenTelemetry Collector for kinfer's tracing tests (test/otel): the Collector's own OTLP
// receiver (gRPC and HTTP, as any collector in a cluster runs it) and one exporter, spanfile, that appends
// every batch of spans it receives to a file as OTLP JSON, one line a batch, for the tests to read.
// Built once by test/otel/build.sh into the cache beside the Kubernetes binaries.
package main

import (
	"context"
	"log"
	"os"
	"sync"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/confmap"
	"go.opentelemetry.io/collector/confmap/provider/fileprovider"
	"go.opentelemetry.io/collector/exporter"
	"go.opentelemetry.io/collector/exporter/exporterhelper"
	"go.opentelemetry.io/collector/otelcol"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/receiver"
	"go.opentelemetry.io/collector/receiver/otlpreceiver"
	"go.opentelemetry.io/collector/service/telemetry/otelconftelemetry"
)

type spanFileConfig struct {
	Path string `mapstructure:"path"`
}

func spanFileFactory() exporter.Factory {
	return exporter.NewFactory(
		component.MustNewType("spanfile"),
		func() component.Config { return &spanFileConfig{} },
		exporter.WithTraces(createSpanFile, component.StabilityLevelDevelopment),
	)
}

func createSpanFile(ctx context.Context, set exporter.Settings, cfg component.Config) (exporter.Traces, error) {
	path := cfg.(*spanFileConfig).Path
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, err
	}
	var mu sync.Mutex
	marshaler := &ptrace.JSONMarshaler{}
	return exporterhelper.NewTraces(ctx, set, cfg, func(_ context.Context, td ptrace.Traces) error {
		line, err := marshaler.MarshalTraces(td)
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		_, err = f.Write(append(line, '\n'))
		return err
	}, exporterhelper.WithShutdown(func(context.Context) error { return f.Close() }))
}

func components() (otelcol.Factories, error) {
	receivers, err := otelcol.MakeFactoryMap[receiver.Factory](otlpreceiver.NewFactory())
	if err != nil {
		return otelcol.Factories{}, err
	}
	exporters, err := otelcol.MakeFactoryMap[exporter.Factory](spanFileFactory())
	if err != nil {
		return otelcol.Factories{}, err
	}
	return otelcol.Factories{
		Receivers: receivers,
		Exporters: exporters,
		Telemetry: otelconftelemetry.NewFactory(),
	}, nil
}

func main() {
	settings := otelcol.CollectorSettings{
		BuildInfo: component.BuildInfo{Command: "kinfer-test-collector", Description: "OTLP to a file", Version: "test"},
		Factories: components,
		ConfigProviderSettings: otelcol.ConfigProviderSettings{
			ResolverSettings: confmap.ResolverSettings{
				ProviderFactories: []confmap.ProviderFactory{fileprovider.NewFactory()},
				DefaultScheme:     "file",
			},
		},
	}
	if err := otelcol.NewCommand(settings).Execute(); err != nil {
		log.Fatal(err)
	}
}
