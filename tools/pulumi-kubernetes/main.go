// Command pulumi-resource-kubernetes serves pulumi-kubernetes' provider, built from the Go module proxy.
//
// Pulumi downloads this plugin from the internet; mlrelease builds it from the pinned provider module instead
// (scripts/cluster-tools.sh). The schema and Terraform mapping the provider embeds are generated into this
// directory at build time from the module's own cmd/pulumi-resource-kubernetes files, with the version set.
package main

import (
	_ "embed"

	"github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/provider"
	"github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/version"
)

//go:embed schema-embed.json
var pulumiSchema []byte

//go:embed terraform-mapping-embed.json
var terraformMapping []byte

func main() {
	provider.Serve("kubernetes", version.Version, pulumiSchema, terraformMapping)
}
