package k8s

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/big"
	"strconv"
	"strings"
)

// The subset of the Kubernetes API these manifests use, with the API's
// field names. Documents are decoded strictly (unknown fields are errors),
// so a misspelt field (readinesProbe, targetport) fails the test as it
// would fail `kubectl apply` with server-side field validation. A field
// the manifests start using must be added here, under its API name (see
// https://kubernetes.io/docs/reference/kubernetes-api/). k8s.io/api is not
// in go.mod; with it, these would be its types.

type typeMeta struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
}

type objectMeta struct {
	Name        string            `json:"name"`
	Namespace   string            `json:"namespace,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type kustomization struct {
	typeMeta
	Namespace string      `json:"namespace"`
	Resources []string    `json:"resources"`
	Images    []kustImage `json:"images"`
}

// kustImage is an images[] entry: kustomize replaces the image Name (any
// tag or digest dropped) with NewName (default Name) and Digest, or NewTag.
type kustImage struct {
	Name    string `json:"name"`
	NewName string `json:"newName,omitempty"`
	NewTag  string `json:"newTag,omitempty"`
	Digest  string `json:"digest,omitempty"`
}

type namespaceObj struct {
	typeMeta
	Metadata objectMeta `json:"metadata"`
}

type pvc struct {
	typeMeta
	Metadata objectMeta `json:"metadata"`
	Spec     pvcSpec    `json:"spec"`
}

type pvcSpec struct {
	AccessModes      []string `json:"accessModes"`
	StorageClassName *string  `json:"storageClassName,omitempty"`
	Resources        struct {
		Requests map[string]quantity `json:"requests"`
	} `json:"resources"`
}

type service struct {
	typeMeta
	Metadata objectMeta  `json:"metadata"`
	Spec     serviceSpec `json:"spec"`
}

type serviceSpec struct {
	Type                     string            `json:"type,omitempty"`
	ClusterIP                string            `json:"clusterIP,omitempty"`
	PublishNotReadyAddresses bool              `json:"publishNotReadyAddresses,omitempty"`
	Selector                 map[string]string `json:"selector"`
	Ports                    []servicePort     `json:"ports"`
}

type servicePort struct {
	Name       string       `json:"name"`
	Port       int32        `json:"port"`
	TargetPort *intOrString `json:"targetPort,omitempty"`
	Protocol   string       `json:"protocol,omitempty"`
}

type statefulSet struct {
	typeMeta
	Metadata objectMeta      `json:"metadata"`
	Spec     statefulSetSpec `json:"spec"`
}

type statefulSetSpec struct {
	ServiceName         string `json:"serviceName"`
	Replicas            *int32 `json:"replicas"`
	PodManagementPolicy string `json:"podManagementPolicy,omitempty"`
	UpdateStrategy      *struct {
		Type string `json:"type"`
	} `json:"updateStrategy,omitempty"`
	Selector             labelSelector `json:"selector"`
	Template             podTemplate   `json:"template"`
	VolumeClaimTemplates []pvc         `json:"volumeClaimTemplates,omitempty"`
}

type deployment struct {
	typeMeta
	Metadata objectMeta     `json:"metadata"`
	Spec     deploymentSpec `json:"spec"`
}

type deploymentSpec struct {
	Replicas *int32 `json:"replicas"`
	Strategy *struct {
		Type          string `json:"type"`
		RollingUpdate *struct {
			MaxUnavailable *intOrString `json:"maxUnavailable,omitempty"`
			MaxSurge       *intOrString `json:"maxSurge,omitempty"`
		} `json:"rollingUpdate,omitempty"`
	} `json:"strategy,omitempty"`
	Selector labelSelector `json:"selector"`
	Template podTemplate   `json:"template"`
}

type jobObj struct {
	typeMeta
	Metadata objectMeta `json:"metadata"`
	Spec     struct {
		BackoffLimit            *int32         `json:"backoffLimit,omitempty"`
		TTLSecondsAfterFinished *int32         `json:"ttlSecondsAfterFinished,omitempty"`
		Selector                *labelSelector `json:"selector,omitempty"`
		Template                podTemplate    `json:"template"`
	} `json:"spec"`
}

type podObj struct {
	typeMeta
	Metadata objectMeta `json:"metadata"`
	Spec     podSpec    `json:"spec"`
}

type podTemplate struct {
	Metadata objectMeta `json:"metadata"`
	Spec     podSpec    `json:"spec"`
}

type podSpec struct {
	RestartPolicy                 string                     `json:"restartPolicy,omitempty"`
	EnableServiceLinks            *bool                      `json:"enableServiceLinks,omitempty"`
	AutomountServiceAccountToken  *bool                      `json:"automountServiceAccountToken,omitempty"`
	TerminationGracePeriodSeconds *int64                     `json:"terminationGracePeriodSeconds,omitempty"`
	HostNetwork                   bool                       `json:"hostNetwork,omitempty"`
	SecurityContext               *podSecurityContext        `json:"securityContext,omitempty"`
	Affinity                      *affinity                  `json:"affinity,omitempty"`
	TopologySpreadConstraints     []topologySpreadConstraint `json:"topologySpreadConstraints,omitempty"`
	Containers                    []container                `json:"containers"`
	Volumes                       []volume                   `json:"volumes,omitempty"`
}

type podSecurityContext struct {
	RunAsNonRoot   *bool           `json:"runAsNonRoot,omitempty"`
	RunAsUser      *int64          `json:"runAsUser,omitempty"`
	RunAsGroup     *int64          `json:"runAsGroup,omitempty"`
	FSGroup        *int64          `json:"fsGroup,omitempty"`
	SeccompProfile *seccompProfile `json:"seccompProfile,omitempty"`
}

type seccompProfile struct {
	Type string `json:"type"`
}

type affinity struct {
	PodAntiAffinity *struct {
		PreferredDuringSchedulingIgnoredDuringExecution []struct {
			Weight          int32 `json:"weight"`
			PodAffinityTerm struct {
				TopologyKey   string         `json:"topologyKey"`
				LabelSelector *labelSelector `json:"labelSelector"`
			} `json:"podAffinityTerm"`
		} `json:"preferredDuringSchedulingIgnoredDuringExecution,omitempty"`
	} `json:"podAntiAffinity,omitempty"`
}

type topologySpreadConstraint struct {
	MaxSkew           int32          `json:"maxSkew"`
	TopologyKey       string         `json:"topologyKey"`
	WhenUnsatisfiable string         `json:"whenUnsatisfiable"`
	LabelSelector     *labelSelector `json:"labelSelector"`
}

type container struct {
	Name            string                    `json:"name"`
	Image           string                    `json:"image"`
	ImagePullPolicy string                    `json:"imagePullPolicy,omitempty"`
	Command         []string                  `json:"command,omitempty"`
	Args            []string                  `json:"args,omitempty"`
	Env             []envVar                  `json:"env,omitempty"`
	Ports           []containerPort           `json:"ports,omitempty"`
	StartupProbe    *probe                    `json:"startupProbe,omitempty"`
	LivenessProbe   *probe                    `json:"livenessProbe,omitempty"`
	ReadinessProbe  *probe                    `json:"readinessProbe,omitempty"`
	Resources       resources                 `json:"resources"`
	SecurityContext *containerSecurityContext `json:"securityContext,omitempty"`
	VolumeMounts    []volumeMount             `json:"volumeMounts,omitempty"`
}

type envVar struct {
	Name      string `json:"name"`
	Value     string `json:"value,omitempty"`
	ValueFrom *struct {
		FieldRef *struct {
			FieldPath string `json:"fieldPath"`
		} `json:"fieldRef,omitempty"`
		SecretKeyRef *struct {
			Name     string `json:"name"`
			Key      string `json:"key"`
			Optional *bool  `json:"optional,omitempty"`
		} `json:"secretKeyRef,omitempty"`
		ResourceFieldRef *struct {
			ContainerName string    `json:"containerName,omitempty"`
			Resource      string    `json:"resource"`
			Divisor       *quantity `json:"divisor,omitempty"`
		} `json:"resourceFieldRef,omitempty"`
	} `json:"valueFrom,omitempty"`
}

type containerPort struct {
	Name          string `json:"name"`
	ContainerPort int32  `json:"containerPort"`
	Protocol      string `json:"protocol,omitempty"`
}

type probe struct {
	HTTPGet *struct {
		Path string      `json:"path"`
		Port intOrString `json:"port"`
	} `json:"httpGet,omitempty"`
	TCPSocket *struct {
		Port intOrString `json:"port"`
	} `json:"tcpSocket,omitempty"`
	InitialDelaySeconds int32 `json:"initialDelaySeconds,omitempty"`
	PeriodSeconds       int32 `json:"periodSeconds,omitempty"`
	TimeoutSeconds      int32 `json:"timeoutSeconds,omitempty"`
	FailureThreshold    int32 `json:"failureThreshold,omitempty"`
	SuccessThreshold    int32 `json:"successThreshold,omitempty"`
}

type resources struct {
	Requests map[string]quantity `json:"requests,omitempty"`
	Limits   map[string]quantity `json:"limits,omitempty"`
}

type containerSecurityContext struct {
	AllowPrivilegeEscalation *bool `json:"allowPrivilegeEscalation,omitempty"`
	ReadOnlyRootFilesystem   *bool `json:"readOnlyRootFilesystem,omitempty"`
	RunAsNonRoot             *bool `json:"runAsNonRoot,omitempty"`
	Privileged               *bool `json:"privileged,omitempty"`
	Capabilities             *struct {
		Drop []string `json:"drop,omitempty"`
		Add  []string `json:"add,omitempty"`
	} `json:"capabilities,omitempty"`
}

type volumeMount struct {
	Name      string `json:"name"`
	MountPath string `json:"mountPath"`
	ReadOnly  bool   `json:"readOnly,omitempty"`
}

type volume struct {
	Name                  string `json:"name"`
	PersistentVolumeClaim *struct {
		ClaimName string `json:"claimName"`
		ReadOnly  bool   `json:"readOnly,omitempty"`
	} `json:"persistentVolumeClaim,omitempty"`
	EmptyDir *struct {
		Medium    string    `json:"medium,omitempty"`
		SizeLimit *quantity `json:"sizeLimit,omitempty"`
	} `json:"emptyDir,omitempty"`
	Secret *struct {
		SecretName  string `json:"secretName"`
		DefaultMode *int32 `json:"defaultMode,omitempty"`
		Optional    *bool  `json:"optional,omitempty"`
		Items       []struct {
			Key  string `json:"key"`
			Path string `json:"path"`
			Mode *int32 `json:"mode,omitempty"`
		} `json:"items,omitempty"`
	} `json:"secret,omitempty"`
	CSI *struct {
		Driver           string            `json:"driver"`
		ReadOnly         *bool             `json:"readOnly,omitempty"`
		VolumeAttributes map[string]string `json:"volumeAttributes,omitempty"`
	} `json:"csi,omitempty"`
}

type pdb struct {
	typeMeta
	Metadata objectMeta `json:"metadata"`
	Spec     struct {
		MinAvailable   *intOrString  `json:"minAvailable,omitempty"`
		MaxUnavailable *intOrString  `json:"maxUnavailable,omitempty"`
		Selector       labelSelector `json:"selector"`
	} `json:"spec"`
}

type networkPolicy struct {
	typeMeta
	Metadata objectMeta `json:"metadata"`
	Spec     struct {
		PodSelector labelSelector `json:"podSelector"`
		PolicyTypes []string      `json:"policyTypes,omitempty"`
		Ingress     []struct {
			From  []policyPeer `json:"from,omitempty"`
			Ports []policyPort `json:"ports,omitempty"`
		} `json:"ingress,omitempty"`
		Egress []struct {
			To    []policyPeer `json:"to,omitempty"`
			Ports []policyPort `json:"ports,omitempty"`
		} `json:"egress,omitempty"`
	} `json:"spec"`
}

// policyPeer is a NetworkPolicyPeer (no ipBlock: these manifests name
// pods, never addresses).
type policyPeer struct {
	PodSelector       *labelSelector `json:"podSelector,omitempty"`
	NamespaceSelector *labelSelector `json:"namespaceSelector,omitempty"`
}

type policyPort struct {
	Port     *intOrString `json:"port,omitempty"`
	Protocol string       `json:"protocol,omitempty"`
}

// cert-manager's Issuer and Certificate (cert-manager.io/v1), the fields
// examples/cert-manager.yaml uses.
type issuer struct {
	typeMeta
	Metadata objectMeta `json:"metadata"`
	Spec     struct {
		SelfSigned *struct{} `json:"selfSigned,omitempty"`
		CA         *struct {
			SecretName string `json:"secretName"`
		} `json:"ca,omitempty"`
	} `json:"spec"`
}

type certificate struct {
	typeMeta
	Metadata objectMeta `json:"metadata"`
	Spec     struct {
		SecretName  string   `json:"secretName"`
		IsCA        bool     `json:"isCA,omitempty"`
		CommonName  string   `json:"commonName,omitempty"`
		DNSNames    []string `json:"dnsNames,omitempty"`
		IPAddresses []string `json:"ipAddresses,omitempty"`
		URIs        []string `json:"uris,omitempty"`
		Usages      []string `json:"usages,omitempty"`
		Duration    string   `json:"duration,omitempty"`
		RenewBefore string   `json:"renewBefore,omitempty"`
		PrivateKey  *struct {
			Algorithm      string `json:"algorithm,omitempty"`
			Size           int    `json:"size,omitempty"`
			RotationPolicy string `json:"rotationPolicy,omitempty"`
		} `json:"privateKey,omitempty"`
		IssuerRef struct {
			Name  string `json:"name"`
			Kind  string `json:"kind,omitempty"`
			Group string `json:"group,omitempty"`
		} `json:"issuerRef"`
	} `json:"spec"`
}

// The Prometheus Operator's ServiceMonitor (monitoring.coreos.com/v1), the
// fields servicemonitor.yaml uses.
type serviceMonitor struct {
	typeMeta
	Metadata objectMeta `json:"metadata"`
	Spec     struct {
		JobLabel          string `json:"jobLabel,omitempty"`
		NamespaceSelector *struct {
			Any        bool     `json:"any,omitempty"`
			MatchNames []string `json:"matchNames,omitempty"`
		} `json:"namespaceSelector,omitempty"`
		Selector  labelSelector `json:"selector"`
		Endpoints []struct {
			Port          string       `json:"port,omitempty"`
			TargetPort    *intOrString `json:"targetPort,omitempty"`
			Path          string       `json:"path,omitempty"`
			Scheme        string       `json:"scheme,omitempty"`
			Interval      string       `json:"interval,omitempty"`
			ScrapeTimeout string       `json:"scrapeTimeout,omitempty"`
			HonorLabels   bool         `json:"honorLabels,omitempty"`
		} `json:"endpoints"`
	} `json:"spec"`
}

type labelSelector struct {
	MatchLabels      map[string]string `json:"matchLabels,omitempty"`
	MatchExpressions []struct {
		Key      string   `json:"key"`
		Operator string   `json:"operator"`
		Values   []string `json:"values,omitempty"`
	} `json:"matchExpressions,omitempty"`
}

// matches reports whether labels satisfy the selector (an empty selector
// matches everything, as in a NetworkPolicy's podSelector).
func (s labelSelector) matches(labels map[string]string) bool {
	for k, v := range s.MatchLabels {
		if labels[k] != v {
			return false
		}
	}
	for _, e := range s.MatchExpressions {
		v, ok := labels[e.Key]
		in := false
		for _, x := range e.Values {
			in = in || (ok && v == x)
		}
		switch e.Operator {
		case "In":
			if !in {
				return false
			}
		case "NotIn":
			if in {
				return false
			}
		case "Exists":
			if !ok {
				return false
			}
		case "DoesNotExist":
			if ok {
				return false
			}
		default:
			return false
		}
	}
	return true
}

func (s labelSelector) empty() bool { return len(s.MatchLabels) == 0 && len(s.MatchExpressions) == 0 }

// intOrString is the API's IntOrString: a port number or a port name, a
// count or a percentage.
type intOrString struct {
	Int   int32
	Str   string
	IsStr bool
}

func (v *intOrString) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		v.IsStr = true
		return json.Unmarshal(b, &v.Str)
	}
	return json.Unmarshal(b, &v.Int)
}

func (v intOrString) String() string {
	if v.IsStr {
		return v.Str
	}
	return strconv.Itoa(int(v.Int))
}

// quantity is a resource.Quantity kept as written ("4", "500m", "16Gi").
type quantity string

func (q *quantity) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*q = quantity(s)
	} else {
		*q = quantity(b) // a bare number
	}
	_, err := q.value()
	return err
}

// value parses the quantity exactly (decimal and binary SI suffixes).
func (q quantity) value() (*big.Rat, error) {
	s := string(q)
	suffixes := []struct {
		s string
		m *big.Rat
	}{
		{"Ki", new(big.Rat).SetInt64(1 << 10)}, {"Mi", new(big.Rat).SetInt64(1 << 20)},
		{"Gi", new(big.Rat).SetInt64(1 << 30)}, {"Ti", new(big.Rat).SetInt64(1 << 40)},
		{"Pi", new(big.Rat).SetInt64(1 << 50)}, {"Ei", new(big.Rat).SetInt64(1 << 60)},
		{"m", big.NewRat(1, 1000)}, {"k", new(big.Rat).SetInt64(1e3)}, {"M", new(big.Rat).SetInt64(1e6)},
		{"G", new(big.Rat).SetInt64(1e9)}, {"T", new(big.Rat).SetInt64(1e12)},
		{"P", new(big.Rat).SetInt64(1e15)}, {"E", new(big.Rat).SetInt64(1e18)},
	}
	mult := big.NewRat(1, 1)
	for _, u := range suffixes {
		if strings.HasSuffix(s, u.s) {
			s, mult = strings.TrimSuffix(s, u.s), u.m
			break
		}
	}
	r, ok := new(big.Rat).SetString(s)
	if !ok || r.Sign() < 0 || strings.ContainsAny(s, "eE/") {
		return nil, fmt.Errorf("quantity %q: not a Kubernetes quantity", string(q))
	}
	return r.Mul(r, mult), nil
}
