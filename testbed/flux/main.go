// Command stowage-flux renders a Flux Kustomization the way kustomize-controller does,
// with Flux's own code (github.com/fluxcd/pkg/kustomize and github.com/fluxcd/pkg/ssa),
// and prints the objects kustomize-controller would send to the API server as a YAML
// stream. The test kit applies that stream server-side (tests/src/kube/install.rs).
//
//	stowage-flux build --root DIR --kustomization KS.yaml [--strict] [--no-normalize]
//
// KS.yaml holds one kustomize.toolkit.fluxcd.io Kustomization: spec.path is relative to
// DIR (the source's root, as the artifact's root is for the controller), and the spec's
// targetNamespace, namePrefix, patches, images, components, commonMetadata and
// postBuild.substitute are honoured as the controller honours them. The steps, in the
// controller's order (internal/controller/kustomization_controller.go):
//
//  1. DIR is copied to a temporary directory (the controller works on an extracted
//     artifact; the generator writes into it);
//  2. generator.NewGenerator(root, ks).WriteFile(path): the kustomization.yaml is
//     generated or amended with the spec's fields;
//  3. generator.SecureBuild(root, path, true): kustomize build confined to the root
//     (remote bases allowed, the controller's default);
//  4. for every resource, generator.SubstituteVariables(ks, res, SubstituteWithStrict(
//     --strict)) when spec.postBuild is set (objects labelled or annotated
//     kustomize.toolkit.fluxcd.io/substitute: disabled are left alone);
//  5. the apply's preparation: ssautil.ReadObjects of the build's YAML,
//     normalize.UnstructuredList and SetCommonMetadata (skipped with --no-normalize,
//     which prints the build's YAML as the controller's build returns it).
//
// postBuild.substituteFrom needs the cluster's ConfigMaps and Secrets: it is refused.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	generator "github.com/fluxcd/pkg/kustomize"
	"github.com/fluxcd/pkg/ssa/normalize"
	ssautil "github.com/fluxcd/pkg/ssa/utils"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "stowage-flux: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string, out io.Writer) error {
	if len(args) == 0 || args[0] != "build" {
		return errors.New("usage: stowage-flux build --root DIR --kustomization KS.yaml [--strict] [--no-normalize]")
	}
	flags := flag.NewFlagSet("build", flag.ContinueOnError)
	root := flags.String("root", "", "the source's root directory (spec.path is relative to it)")
	ksFile := flags.String("kustomization", "", "a file holding one Flux Kustomization")
	strict := flags.Bool("strict", false, "kustomize-controller's StrictPostBuildSubstitutions")
	noNormalize := flags.Bool("no-normalize", false, "print the build's YAML, before the apply's normalization")
	if err := flags.Parse(args[1:]); err != nil {
		return err
	}
	if *root == "" || *ksFile == "" {
		return errors.New("build needs --root and --kustomization")
	}
	ks, err := readKustomization(*ksFile)
	if err != nil {
		return err
	}
	rendered, err := build(*root, ks, *strict)
	if err != nil {
		return err
	}
	if *noNormalize {
		_, err = out.Write(rendered)
		return err
	}
	objects, err := ssautil.ReadObjects(bytes.NewReader(rendered))
	if err != nil {
		return fmt.Errorf("reading the build's objects: %w", err)
	}
	if err := normalize.UnstructuredList(objects); err != nil {
		return err
	}
	labels, _, _ := unstructured.NestedStringMap(ks.Object, "spec", "commonMetadata", "labels")
	annotations, _, _ := unstructured.NestedStringMap(ks.Object, "spec", "commonMetadata", "annotations")
	if len(labels) > 0 || len(annotations) > 0 {
		ssautil.SetCommonMetadata(objects, labels, annotations)
	}
	text, err := ssautil.ObjectsToYAML(objects)
	if err != nil {
		return err
	}
	_, err = io.WriteString(out, text)
	return err
}

// readKustomization reads the Flux Kustomization of file.
func readKustomization(file string) (unstructured.Unstructured, error) {
	var ks unstructured.Unstructured
	data, err := os.ReadFile(file)
	if err != nil {
		return ks, err
	}
	if err := yaml.Unmarshal(data, &ks.Object); err != nil {
		return ks, fmt.Errorf("%s: %w", file, err)
	}
	if ks.GetKind() != "Kustomization" || !strings.HasPrefix(ks.GetAPIVersion(), "kustomize.toolkit.fluxcd.io/") {
		return ks, fmt.Errorf("%s: not a kustomize.toolkit.fluxcd.io Kustomization (%s %s)", file, ks.GetAPIVersion(), ks.GetKind())
	}
	if _, found, _ := unstructured.NestedFieldNoCopy(ks.Object, "spec", "postBuild", "substituteFrom"); found {
		return ks, fmt.Errorf("%s: postBuild.substituteFrom reads the cluster, which this renderer does not", file)
	}
	return ks, nil
}

// build is kustomize-controller's generate and build on a copy of root.
func build(root string, ks unstructured.Unstructured, strict bool) ([]byte, error) {
	work, err := os.MkdirTemp("", "stowage-flux-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	if err := copyTree(root, work); err != nil {
		return nil, fmt.Errorf("copying %s: %w", root, err)
	}
	path, _, _ := unstructured.NestedString(ks.Object, "spec", "path")
	dirPath, err := secureJoin(work, path)
	if err != nil {
		return nil, err
	}
	if _, err := generator.NewGenerator(work, ks).WriteFile(dirPath); err != nil {
		return nil, fmt.Errorf("kustomization generation failed: %w", err)
	}
	m, err := generator.SecureBuild(work, dirPath, true)
	if err != nil {
		return nil, fmt.Errorf("kustomize build failed: %w", err)
	}
	_, postBuild, _ := unstructured.NestedFieldNoCopy(ks.Object, "spec", "postBuild")
	for _, res := range m.Resources() {
		if res.GetName() == "" || res.GetKind() == "" || res.GetApiVersion() == "" {
			return nil, fmt.Errorf("failed to decode Kubernetes apiVersion, kind and name from: %v", res.String())
		}
		if !postBuild {
			continue
		}
		outRes, err := generator.SubstituteVariables(context.Background(), nil, ks, res,
			generator.SubstituteWithStrict(strict))
		if err != nil {
			return nil, fmt.Errorf("post build failed for '%s': %w", res.GetName(), err)
		}
		if outRes != nil {
			if _, err := m.Replace(res); err != nil {
				return nil, err
			}
		}
	}
	resources, err := m.AsYaml()
	if err != nil {
		return nil, fmt.Errorf("kustomize build failed: %w", err)
	}
	return resources, nil
}

// secureJoin joins path (spec.path, relative to the source's root) to root, refusing a
// path that leaves it.
func secureJoin(root, path string) (string, error) {
	joined := filepath.Join(root, filepath.FromSlash(path))
	rel, err := filepath.Rel(root, joined)
	if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return "", fmt.Errorf("spec.path %q leaves the source's root", path)
	}
	if info, err := os.Stat(joined); err != nil || !info.IsDir() {
		return "", fmt.Errorf("spec.path %q: no such directory in the source", path)
	}
	return joined, nil
}

// copyTree copies the regular files and directories of src into dst.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		to := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(to, 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(to, data, 0o644)
	})
}
