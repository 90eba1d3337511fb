package wechatpay

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strconv"
)

// Authorization schemes of the two access modes.
const (
	schemePartner = "WECHATPAY2-SHA256-RSA2048"
	schemeBrand   = "WECHATPAY-BRAND-SHA256-RSA2048"
)

const (
	nonceLen      = 32
	nonceAlphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)

// newNonce returns 32 characters of [0-9A-Za-z] from crypto/rand, without
// modulo bias (bytes ≥ 248 are drawn again).
func newNonce() (string, error) {
	var out [nonceLen]byte
	var buf [nonceLen + 16]byte
	n := 0
	for n < nonceLen {
		if _, err := rand.Read(buf[:]); err != nil {
			return "", fmt.Errorf("wechatpay: nonce: %w", err)
		}
		for _, b := range buf {
			if b >= 248 { // 248 = 4*62
				continue
			}
			out[n] = nonceAlphabet[b%62]
			if n++; n == nonceLen {
				break
			}
		}
	}
	return string(out[:]), nil
}

// requestMessage is the string to sign of a request: five lines, each ending
// in '\n'. uri is the path plus '?' and the query exactly as sent.
func requestMessage(method, uri string, timestamp int64, nonce string, body []byte) []byte {
	ts := strconv.FormatInt(timestamp, 10)
	b := make([]byte, 0, len(method)+len(uri)+len(ts)+len(nonce)+len(body)+5)
	b = append(b, method...)
	b = append(b, '\n')
	b = append(b, uri...)
	b = append(b, '\n')
	b = append(b, ts...)
	b = append(b, '\n')
	b = append(b, nonce...)
	b = append(b, '\n')
	b = append(b, body...)
	b = append(b, '\n')
	return b
}

// responseMessage is the verification string of a response: three lines.
func responseMessage(timestamp, nonce string, body []byte) []byte {
	b := make([]byte, 0, len(timestamp)+len(nonce)+len(body)+3)
	b = append(b, timestamp...)
	b = append(b, '\n')
	b = append(b, nonce...)
	b = append(b, '\n')
	b = append(b, body...)
	b = append(b, '\n')
	return b
}

// signSHA256 returns the standard-Base64 RSA PKCS#1 v1.5 SHA-256 signature of msg.
func signSHA256(key *rsa.PrivateKey, msg []byte) (string, error) {
	sum := sha256.Sum256(msg)
	sig, err := rsa.SignPKCS1v15(nil, key, crypto.SHA256, sum[:])
	if err != nil {
		return "", fmt.Errorf("wechatpay: signing: %w", err)
	}
	return base64.StdEncoding.EncodeToString(sig), nil
}

// authorization builds the Authorization header of one attempt, with a fresh
// timestamp and nonce.
func (c *Client) authorization(method, uri string, body []byte) (string, error) {
	nonce, err := newNonce()
	if err != nil {
		return "", err
	}
	ts := c.now().Unix()
	sig, err := signSHA256(c.key, requestMessage(method, uri, ts, nonce, body))
	if err != nil {
		return "", err
	}
	return c.authHead + `nonce_str="` + nonce + `",timestamp="` + strconv.FormatInt(ts, 10) +
		`",signature="` + sig + `"`, nil
}
